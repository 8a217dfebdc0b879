#!/usr/bin/env bash
# The realistic-phantom benchmark of the README: multi-compartment tissue (`dwivae phantom --tissue
# realistic`), DIPY's 64-direction b=1000 protocol and the 102-volume multi-shell table of
# ../shared/data (b up to 2800), Rician and 4-coil noncentral-chi noise, SNR 10, 20 and 30: twelve
# phantoms. 40 x 40 x 20 voxels: DIPY's mppca takes minutes per phantom here.
# Usage: benchmarks/realistic_benchmark.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/realistic}
BIN=${BIN:-.venv/bin}
read -r BVAL BVEC < <($BIN/python -c "from dipy.data import get_fnames; f = get_fnames(name='small_64D'); print(f[1], f[2])")
MSMT=../shared/data/mrtrix_msmt_dwi
phantom() {  # NAME SNR NOISE PROTOCOL-ARGS...
  local name=$1 snr=$2 noise=$3; shift 3
  local coils=(); [ "$noise" = nc-chi ] && coils=(--coils 4)
  $BIN/dwivae phantom "$@" --tissue realistic --shape 40 40 20 --snr "$snr" --noise "$noise" "${coils[@]}" \
    --out "$OUT/$name" --force --quiet
}
names=()
for snr in 20 10 30; do
  phantom "dir64_rician_snr$snr" $snr rician --bvals "$BVAL" --bvecs "$BVEC"; names+=("dir64_rician_snr$snr")
  phantom "msmt_nc-chi_snr$snr" $snr nc-chi --bvals $MSMT.bval --bvecs $MSMT.bvec; names+=("msmt_nc-chi_snr$snr")
  phantom "dir64_nc-chi_snr$snr" $snr nc-chi --bvals "$BVAL" --bvecs "$BVEC"; names+=("dir64_nc-chi_snr$snr")
  phantom "msmt_rician_snr$snr" $snr rician --bvals $MSMT.bval --bvecs $MSMT.bvec; names+=("msmt_rician_snr$snr")
done
$BIN/python benchmarks/realistic.py "$OUT/cache" "${names[@]/#/$OUT/}" --json "$OUT/results.json"
