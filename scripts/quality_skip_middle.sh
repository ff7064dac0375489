#!/usr/bin/env bash
# Does path drop's skip_middle (a fixed count of dropped samples per batch, which skip the middle blocks) train as well
# as the reference's independent per-sample draw? specs/digits_sprint.yaml with skip_middle true and false, one seed
# each per pair, two runs at a time on one thread each; each final checkpoint's digits FD over 400 samples with the
# spec's sampling (PDG) and without guidance. docs/QUALITY.md gives what it found.
#   bash scripts/quality_skip_middle.sh OUT [SEED...]      (default seeds 0-7; about 6 minutes per seed on 2 cores)
set -euo pipefail
OUT=${1:?usage: quality_skip_middle.sh OUT [SEED...]}; shift
SEEDS=${*:-0 1 2 3 4 5 6 7}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
one() {  # one SEED SKIP: train, then FD with PDG and without guidance
  local r="s$1_$2"
  cat > "$OUT/$r.yaml" <<YML
extends: $REPO/specs/digits_sprint.yaml
name: digits_sprint_$r
passes:
  - {name: partition, encoder: 2, decoder: 2}
  - {name: route, sampler: structured, drop: 0.75}
  - {name: fuse, kind: concat_linear}
  - {name: path_drop, p: 0.1, skip_middle: $2}
  - {name: pdg}
train:
  seed: $1
YML
  export OMP_NUM_THREADS=1
  sprintc train "$OUT/$r.yaml" --out "$OUT/run_$r" --device cpu --no-progress > "$OUT/$r.log" 2>&1
  local ckpt="$OUT/run_$r/checkpoints/step_001400"
  sprintc eval "$OUT/run_$r/spec.lock.yaml" --ckpt "$ckpt" --n 400 --seed 0 --json "$OUT/fd_$r.json" --device cpu > "$OUT/eval_$r.log" 2>&1
  sprintc eval "$OUT/run_$r/spec.lock.yaml" --ckpt "$ckpt" --n 400 --seed 0 --guidance none --json "$OUT/fdnone_$r.json" \
    --device cpu > "$OUT/evalnone_$r.log" 2>&1
}
for s in $SEEDS; do
  one "$s" true & one "$s" false & wait
done
python3 - "$OUT" $SEEDS <<'PY'
import json, statistics as st, sys
out, seeds = sys.argv[1], sys.argv[2:]
for skip in ("true", "false"):
    for kind in ("fd", "fdnone"):
        v = [json.load(open(f"{out}/{kind}_s{s}_{skip}.json"))["fd"] for s in seeds]
        sd = st.stdev(v) if len(v) > 1 else float("nan")
        print(f"skip_middle {skip:5} {'PDG' if kind == 'fd' else 'no guidance':11} FD {st.mean(v):6.1f} +- {sd:5.1f}  "
              + " ".join(f"{x:.1f}" for x in v))
PY
