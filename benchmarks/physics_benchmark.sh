#!/usr/bin/env bash
# Benchmark rows beyond the study: noncentral-chi noise (4 coils) on seed32 and a multi-shell protocol
# (MRtrix3's msmt sample: 102 volumes, b=700/1200/2800), 48 x 48 x 24, SNR 20; the default models
# against a model trained with mixed atoms, fresh every batch, and the noise measured on the data;
# each network also with --spatial (METHOD+spatial).
# Usage: benchmarks/physics_benchmark.sh [OUT]   (default benchmarks/results/physics)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/physics}
BIN=${BIN:-.venv/bin}
MSMT=../shared/data/mrtrix_msmt_dwi
$BIN/dwivae phantom --protocol seed32 --shape 48 48 24 --snr 20 --noise nc-chi --coils 4 --out "$OUT/seed32_ncchi4_snr20" --force
$BIN/dwivae phantom --bvals $MSMT.bval --bvecs $MSMT.bvec --shape 48 48 24 --snr 20 --noise rician --out "$OUT/msmt_snr20" --force
for ph in seed32_ncchi4_snr20 msmt_snr20; do
  noise=$([ "$ph" = msmt_snr20 ] && echo rician || echo "nc-chi --coils 4")
  # shellcheck disable=SC2086
  $BIN/dwivae train --bvals "$OUT/$ph/dwi.bval" --bvecs "$OUT/$ph/dwi.bvec" --atoms mixed --fresh-atoms \
    --noise $noise --snr-from "$OUT/$ph/dwi.nii.gz" --quiet --force --out "$OUT/models/vae_matched_$ph"
done
$BIN/dwivae benchmark --phantom "$OUT/seed32_ncchi4_snr20" "$OUT/msmt_snr20" --methods vae dwidenoise mppca svd \
  --variants "$OUT"/models/vae_matched_* --spatial --out "$OUT/results" --force
