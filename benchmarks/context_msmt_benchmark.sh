#!/usr/bin/env bash
# Learned spatial context on the multi-shell phantom of physics_benchmark.sh (MRtrix3's msmt
# protocol: 102 volumes, b=700/1200/2800; 48 x 48 x 24, Rician, SNR 20: the same file, so its
# MP-PCA row compares): the data-matched model of that benchmark trained again with --context
# (the same autoencoder: same flags and seed), scored with the context network (METHOD), without
# it (METHOD-voxelwise) and with --spatial instead, next to dwidenoise in the same run.
# Usage: benchmarks/context_msmt_benchmark.sh [OUT]   (default benchmarks/results/context_msmt)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/context_msmt}
BIN=${BIN:-.venv/bin}
MSMT=../shared/data/mrtrix_msmt_dwi
$BIN/dwivae phantom --bvals $MSMT.bval --bvecs $MSMT.bvec --shape 48 48 24 --snr 20 --noise rician --out "$OUT/msmt_snr20" --force
$BIN/dwivae train --bvals "$OUT/msmt_snr20/dwi.bval" --bvecs "$OUT/msmt_snr20/dwi.bvec" --atoms mixed --fresh-atoms \
  --noise rician --snr-from "$OUT/msmt_snr20/dwi.nii.gz" --context --quiet --force --out "$OUT/models/ctx_matched_msmt"
$BIN/dwivae benchmark --phantom "$OUT/msmt_snr20" --methods dwidenoise --variants "$OUT/models/ctx_matched_msmt" \
  --spatial --out "$OUT/results" --force
