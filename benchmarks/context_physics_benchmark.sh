#!/usr/bin/env bash
# Learned spatial context on the phantoms of physics_benchmark.sh (48 x 48 x 24, SNR 20: seed32 with
# 4-coil noncentral chi noise, and MRtrix3's msmt protocol, 102 volumes, b=700/1200/2800, Rician:
# the same files, so its MP-PCA rows compare): the data-matched models of that benchmark trained
# again with --context (the same autoencoders: same flags and seed), scored with the context network
# (METHOD), without it (METHOD-voxelwise) and with --spatial instead, next to dwidenoise in the same run.
# Usage: benchmarks/context_physics_benchmark.sh [OUT [PHANTOM...]]
#   (default benchmarks/results/context_physics, phantoms seed32_ncchi4_snr20 msmt_snr20)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/context_physics}
PHANTOMS=("${@:2}")
[ ${#PHANTOMS[@]} -gt 0 ] || PHANTOMS=(seed32_ncchi4_snr20 msmt_snr20)
BIN=${BIN:-.venv/bin}
MSMT=../shared/data/mrtrix_msmt_dwi
for ph in "${PHANTOMS[@]}"; do
  case $ph in
    msmt_snr20)
      $BIN/dwivae phantom --bvals $MSMT.bval --bvecs $MSMT.bvec --shape 48 48 24 --snr 20 --noise rician --out "$OUT/$ph" --force
      noise=rician; model=ctx_matched_msmt ;;
    seed32_ncchi4_snr20)
      $BIN/dwivae phantom --protocol seed32 --shape 48 48 24 --snr 20 --noise nc-chi --coils 4 --out "$OUT/$ph" --force
      noise="nc-chi --coils 4"; model=ctx_matched_ncchi4 ;;
    *) echo "unknown phantom $ph" >&2; exit 2 ;;
  esac
  # shellcheck disable=SC2086
  $BIN/dwivae train --bvals "$OUT/$ph/dwi.bval" --bvecs "$OUT/$ph/dwi.bvec" --atoms mixed --fresh-atoms \
    --noise $noise --snr-from "$OUT/$ph/dwi.nii.gz" --context --quiet --force --out "$OUT/models/$model"
  $BIN/dwivae benchmark --phantom "$OUT/$ph" --methods dwidenoise --variants "$OUT/models/$model" \
    --spatial --out "$OUT/results_$ph" --force
done
