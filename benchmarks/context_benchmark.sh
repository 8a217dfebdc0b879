#!/usr/bin/env bash
# Learned spatial context (`train --context`): a network that combines the latent codes of each
# voxel's 3x3x3 neighbourhood, trained on simulated two-tissue neighbourhoods. Each model is scored
# with it (METHOD), without it (METHOD-voxelwise, the same autoencoder voxel by voxel) and with the
# hand-set bilateral average instead (METHOD+spatial), next to MRtrix3's dwidenoise in the same run,
# on the seed32 phantoms of phantom_benchmark.sh (96 x 96 x 50, Rician, SNR 10/20/30: the same files,
# so its MP-PCA rows compare). The models are the data-matched variants of spatial_benchmark.sh, the
# second one trained on samples normalised by their own noisy b0 mean (`--normalise b0`), as real
# data are.
# Usage: benchmarks/context_benchmark.sh [OUT]   (default benchmarks/results/context)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/context}
BIN=${BIN:-.venv/bin}
for snr in 10 20 30; do
  $BIN/dwivae phantom --protocol seed32 --shape 96 96 50 --snr $snr --noise rician --out "$OUT/seed32_snr$snr" --force
done
$BIN/dwivae train --protocol seed32 --atoms mixed --fresh-atoms --noise rician --snr-range 5 100 --context --quiet \
  --out "$OUT/models/ctx_mixed" --force
# the same with 10 % isotropic tensors up to free water, wider layers and b0 normalisation
$BIN/dwivae train --protocol seed32 --atoms mixed --fresh-atoms --noise rician --snr-range 5 100 --context --quiet \
  --free-water 0.1 --hidden 64 32 16 --normalise b0 --out "$OUT/models/ctx_free_water_b0" --force
$BIN/dwivae benchmark --phantom "$OUT"/seed32_snr{10,20,30} --methods dwidenoise \
  --variants "$OUT/models/ctx_mixed" "$OUT/models/ctx_free_water_b0" --spatial --threads 1 \
  --out "$OUT/results" --force
