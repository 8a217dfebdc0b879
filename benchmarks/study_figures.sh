#!/usr/bin/env bash
# The study's model figures (Figs. 3, 4, 7, 8, 9): VAE latent 7 and 10, VAE without KL, DAE,
# trained with the default preset on seed32, drawn together.
# Usage: benchmarks/study_figures.sh [OUT]   (default benchmarks/results/study_figures)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/study_figures}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT/models"
$BIN/dwivae train --protocol seed32 --arch vae --quiet --force --out "$OUT/models/vae_latent7"
$BIN/dwivae train --protocol seed32 --arch vae --latent 10 --quiet --force --out "$OUT/models/vae_latent10"
$BIN/dwivae train --protocol seed32 --arch vae --beta-max 0 --quiet --force --out "$OUT/models/vae_nokl"
$BIN/dwivae train --protocol seed32 --arch dae --quiet --force --out "$OUT/models/dae"
$BIN/dwivae figures "$OUT"/models/{vae_latent7,vae_latent10,vae_nokl,dae} --force --out "$OUT/figures"
