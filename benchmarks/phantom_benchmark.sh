#!/usr/bin/env bash
# The phantom benchmark of the README: the seed32 protocol and DIPY's 64-direction b=1000 protocol
# (small_64D's gradient table), Rician noise at SNR 10, 20 and 30, every method. seed32 phantoms are
# 96 x 96 x 50 voxels; the 64-direction ones 48 x 48 x 24, because DIPY's mppca took over 26 min
# on one 96 x 96 x 50 x 65 phantom here.
# Usage: benchmarks/phantom_benchmark.sh [OUT]   (default benchmarks/results/phantom)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/phantom}
BIN=${BIN:-.venv/bin}
read -r BVAL BVEC < <($BIN/python -c "from dipy.data import get_fnames; f = get_fnames(name='small_64D'); print(f[1], f[2])")
for snr in 10 20 30; do
  $BIN/dwivae phantom --protocol seed32 --shape 96 96 50 --snr $snr --noise rician --out "$OUT/seed32_snr$snr" --force
  $BIN/dwivae phantom --bvals "$BVAL" --bvecs "$BVEC" --shape 48 48 24 --snr $snr --noise rician --out "$OUT/dir64_snr$snr" --force
done
$BIN/dwivae benchmark --phantom "$OUT"/seed32_snr{10,20,30} "$OUT"/dir64_snr{10,20,30} --threads 1 --out "$OUT/results" --force
