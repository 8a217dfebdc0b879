#!/usr/bin/env bash
# The options of `dwivae denoise` against the plain command, in the same run, with the peers:
# models of `dwivae train` (the default, Gaussian noise; data-matched; with the learned context
# network of `train --context`), each voxel by voxel, with --spatial and with --bias-correct, on the
# piecewise-constant seed32 phantom (96 x 96 x 50, Rician, SNR 20: the phantom the context network
# was tuned on) and the realistic 64-direction phantom (40 x 40 x 20, Rician, SNR 20). Usage: benchmarks/options_benchmark.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/options}
BIN=${BIN:-.venv/bin}
read -r BVAL BVEC < <($BIN/python -c "from dipy.data import get_fnames; f = get_fnames(name='small_64D'); print(f[1], f[2])")
$BIN/dwivae phantom --protocol seed32 --shape 96 96 50 --snr 20 --noise rician --out "$OUT/seed32_snr20" --force --quiet
$BIN/dwivae phantom --bvals "$BVAL" --bvecs "$BVEC" --tissue realistic --shape 40 40 20 --snr 20 --noise rician \
  --out "$OUT/dir64_rician_snr20" --force --quiet
# the context network on seed32 only (the protocol it was tuned on; 23 minutes to train here)
[ -d "$OUT/models/seed32-context" ] || $BIN/dwivae train --protocol seed32 --atoms mixed --fresh-atoms --noise rician \
  --snr-range 5 100 --free-water 0.1 --hidden 64 32 16 --normalise b0 --context --quiet --out "$OUT/models/seed32-context"
[ -d "$OUT/models/seed32-gaussian" ] || $BIN/dwivae train --protocol seed32 --quiet --out "$OUT/models/seed32-gaussian"
[ -d "$OUT/models/dir64-gaussian" ] || $BIN/dwivae train --bvals "$BVAL" --bvecs "$BVEC" --quiet \
  --out "$OUT/models/dir64-gaussian"
[ -d "$OUT/models/dir64-matched" ] || $BIN/dwivae train --bvals "$BVAL" --bvecs "$BVEC" --atoms mixed --fresh-atoms \
  --noise rician --snr-from "$OUT/dir64_rician_snr20/dwi.nii.gz" --quiet --out "$OUT/models/dir64-matched"
$BIN/dwivae benchmark --phantom "$OUT/seed32_snr20" --methods dwivae mppca dwidenoise \
  --variants "$OUT/models/seed32-context" "$OUT/models/seed32-gaussian" --spatial --bias-correct \
  --out "$OUT/results_seed32_snr20" --force
$BIN/dwivae benchmark --phantom "$OUT/dir64_rician_snr20" --methods dwivae mppca dwidenoise \
  --variants "$OUT/models/dir64-matched" "$OUT/models/dir64-gaussian" --spatial --bias-correct \
  --out "$OUT/results_dir64_rician_snr20" --force
