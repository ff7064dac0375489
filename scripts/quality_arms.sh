#!/usr/bin/env bash
# Do two or more variants of the digits recipe train as well as each other? Each ARM is a spec file (it extends
# specs/digits_sprint.yaml or another spec, and its file name names the arm). For each seed, every arm trains on the
# CPU at the same time (one thread each); each final checkpoint's digits FD over 400 samples with the spec's sampling
# and without guidance; then the mean and spread per arm.
#   SEEDS="0 1 2" bash scripts/quality_arms.sh OUT ARM.yaml ARM.yaml...      (default seeds 0-7)
set -euo pipefail
OUT=${1:?usage: quality_arms.sh OUT ARM.yaml ARM.yaml...}; shift
ARMS=("$@")
[ ${#ARMS[@]} -ge 2 ] || { echo "quality_arms.sh: give two arms or more" >&2; exit 2; }
SEEDS=${SEEDS:-0 1 2 3 4 5 6 7}
mkdir -p "$OUT"
one() {  # one SEED ARM.yaml: train, then FD with the spec's guidance and without
  local arm=$(basename "$2" .yaml) r
  r="s$1_$arm"
  printf 'extends: %s\nname: q_%s\ntrain:\n  seed: %s\n' "$(realpath "$2")" "$r" "$1" > "$OUT/$r.yaml"
  export OMP_NUM_THREADS=1
  sprintc train "$OUT/$r.yaml" --out "$OUT/run_$r" --device cpu --no-progress > "$OUT/$r.log" 2>&1
  local ckpt=$(ls -d "$OUT/run_$r"/checkpoints/step_* | sort | tail -1)
  sprintc eval "$OUT/run_$r/spec.lock.yaml" --ckpt "$ckpt" --n 400 --seed 0 --json "$OUT/fd_$r.json" --device cpu > "$OUT/eval_$r.log" 2>&1
  sprintc eval "$OUT/run_$r/spec.lock.yaml" --ckpt "$ckpt" --n 400 --seed 0 --guidance none --json "$OUT/fdnone_$r.json" \
    --device cpu > "$OUT/evalnone_$r.log" 2>&1
}
for s in $SEEDS; do
  for a in "${ARMS[@]}"; do one "$s" "$a" & done
  wait
done
python3 - "$OUT" "$SEEDS" "${ARMS[@]}" <<'PY'
import json, os, statistics as st, sys
out, seeds, arms = sys.argv[1], sys.argv[2].split(), [os.path.basename(a)[:-5] for a in sys.argv[3:]]
for arm in arms:
    for kind in ("fd", "fdnone"):
        v = [json.load(open(f"{out}/{kind}_s{s}_{arm}.json"))["fd"] for s in seeds]
        sd = st.stdev(v) if len(v) > 1 else float("nan")
        print(f"{arm:24} {'guided' if kind == 'fd' else 'no guidance':11} FD {st.mean(v):6.1f} +- {sd:5.1f}  "
              + " ".join(f"{x:.1f}" for x in v))
PY
