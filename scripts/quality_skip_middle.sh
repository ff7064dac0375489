#!/usr/bin/env bash
# Does path drop's skip_middle (a fixed count of dropped samples per batch, which skip the middle blocks) train as well
# as the reference's independent per-sample draw? specs/digits_sprint.yaml with skip_middle true and false, one seed
# each per pair, through scripts/quality_arms.sh (FD with the spec's sampling, PDG, and without guidance).
# docs/QUALITY.md gives what it found.
#   bash scripts/quality_skip_middle.sh OUT [SEED...]      (default seeds 0-7; about 6 minutes per seed on 2 cores)
set -euo pipefail
OUT=${1:?usage: quality_skip_middle.sh OUT [SEED...]}; shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
for skip in true false; do
  cat > "$OUT/skip_$skip.yaml" <<YML
extends: $REPO/specs/digits_sprint.yaml
passes:
  - {name: partition, encoder: 2, decoder: 2}
  - {name: route, sampler: structured, drop: 0.75}
  - {name: fuse, kind: concat_linear}
  - {name: path_drop, p: 0.1, skip_middle: $skip}
  - {name: pdg}
YML
done
SEEDS=${*:-0 1 2 3 4 5 6 7} bash "$REPO/scripts/quality_arms.sh" "$OUT" "$OUT/skip_true.yaml" "$OUT/skip_false.yaml"
