#!/usr/bin/env bash
# The options of `dwivae denoise` against the plain command, in the same run, with the peers:
# a data-matched model with --spatial, the learned context network (`train --context`), and
# --bias-correct on a Gaussian-trained model, on the piecewise-constant seed32 phantom (96 x 96 x 50,
# Rician, SNR 20: the phantom the context network was tuned on) and the realistic 64-direction
# phantom (40 x 40 x 20, Rician, SNR 20). Usage: benchmarks/options_benchmark.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/options}
BIN=${BIN:-.venv/bin}
read -r BVAL BVEC < <($BIN/python -c "from dipy.data import get_fnames; f = get_fnames(name='small_64D'); print(f[1], f[2])")
$BIN/dwivae phantom --protocol seed32 --shape 96 96 50 --snr 20 --noise rician --out "$OUT/seed32_snr20" --force --quiet
$BIN/dwivae phantom --bvals "$BVAL" --bvecs "$BVEC" --tissue realistic --shape 40 40 20 --snr 20 --noise rician \
  --out "$OUT/dir64_rician_snr20" --force --quiet
for name in seed32 dir64; do
  if [ $name = seed32 ]; then proto=(--protocol seed32); else proto=(--bvals "$BVAL" --bvecs "$BVEC"); fi
  [ -d "$OUT/models/$name-context" ] || $BIN/dwivae train "${proto[@]}" --atoms mixed --fresh-atoms --noise rician \
    --snr-range 5 100 --free-water 0.1 --hidden 64 32 16 --normalise b0 --context --quiet --out "$OUT/models/$name-context"
  [ -d "$OUT/models/$name-gaussian" ] || $BIN/dwivae train "${proto[@]}" --quiet --out "$OUT/models/$name-gaussian"
done
for name in seed32_snr20 dir64_rician_snr20; do
  short=${name%%_*}
  $BIN/dwivae benchmark --phantom "$OUT/$name" --methods dwivae mppca dwidenoise \
    --variants "$OUT/models/$short-context" "$OUT/models/$short-gaussian" --spatial --bias-correct \
    --out "$OUT/results_$name" --force
done
