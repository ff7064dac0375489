#!/usr/bin/env bash
# Run HERE (not on the device) before each `run` of scripts/gpu_suite.sh: fills the ignored folder .gpu/
# with what the device lacks: the anchor (a copy of ../shared/bench/anchor_dit.py), pydantic's wheels for
# Python 3.12, and a wheel of this checkout (sprintc with its sprintc.passes / sprintc.targets mapping).
# Then call the device tool with carry [".gpu"]. BASE=<commit> also puts a wheel of that commit in .gpu/base/
# (for an A/B of two versions in one device call: ab_train in gpu_suite.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu/whl && mkdir -p .gpu/whl
cp ../shared/bench/anchor_dit.py .gpu/anchor_dit.py
cp ../shared/wheels/gpu-py312/*.whl .gpu/whl/
wheel() {  # wheel COMMIT DEST: build from the committed tree: others' uncommitted edits stay out; no build/ here
  local tmp=$(mktemp -d)
  mkdir "$tmp/src" && git archive "$1" pyproject.toml README.md sprintc passes targets specs | tar -x -C "$tmp/src"
  python -m pip wheel -q --no-deps --no-build-isolation -w "$tmp" "$tmp/src" >/dev/null
  cp "$tmp"/sprintc-*.whl "$2"/
  rm -rf "$tmp"
}
wheel HEAD .gpu/whl
rm -rf .gpu/base
if [ -n "${BASE:-}" ]; then mkdir -p .gpu/base && wheel "$BASE" .gpu/base && echo "base wheel: $(git rev-parse --short "$BASE")"; fi
unzip -l .gpu/whl/sprintc-*.whl | grep 'sprintc/targets/inductor.py' >/dev/null || { echo "wheel lacks sprintc.targets"; exit 1; }
rm -rf /tmp/sprintc_whl_check && python -m pip install -q --no-index --no-deps --target /tmp/sprintc_whl_check .gpu/whl/sprintc-*.whl
(cd /tmp && PYTHONPATH=/tmp/sprintc_whl_check python -c "import sprintc.targets.inductor, sprintc.passes, sprintc.bench; print('wheel imports from', sprintc.bench.__file__)")
ls -la .gpu/whl
du -sh .gpu
