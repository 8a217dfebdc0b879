#!/usr/bin/env bash
# Spatial context (`denoise --spatial`): each network's latent means averaged over the 3x3x3
# neighbourhood, edge-aware, scored next to the voxel-wise output (METHOD+spatial) and MRtrix3's
# dwidenoise in the same run, on the seed32 phantoms of phantom_benchmark.sh (96 x 96 x 50,
# Rician, SNR 10/20/30: the same files, so its MP-PCA rows compare). The data-matched variant is
# trained as in the README's variants table, and once more with free water and wider layers. The strength (2) was chosen on a phantom of another
# noise seed (`--seed 7`, 48 x 48 x 24, SNR 20).
# Usage: benchmarks/spatial_benchmark.sh [OUT]   (default benchmarks/results/spatial)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/spatial}
BIN=${BIN:-.venv/bin}
for snr in 10 20 30; do
  $BIN/dwivae phantom --protocol seed32 --shape 96 96 50 --snr $snr --noise rician --out "$OUT/seed32_snr$snr" --force
done
$BIN/dwivae train --protocol seed32 --atoms mixed --fresh-atoms --noise rician --snr-range 5 100 --quiet \
  --out "$OUT/models/vae_mixed_fresh" --force
# the same with 10 % isotropic tensors up to free water, and wider layers
$BIN/dwivae train --protocol seed32 --atoms mixed --fresh-atoms --noise rician --snr-range 5 100 --quiet \
  --free-water 0.1 --hidden 64 32 16 --out "$OUT/models/vae_free_water_wide" --force
$BIN/dwivae benchmark --phantom "$OUT"/seed32_snr{10,20,30} --methods vae dwidenoise \
  --variants "$OUT/models/vae_mixed_fresh" "$OUT/models/vae_free_water_wide" --spatial --threads 1 \
  --out "$OUT/results" --force
