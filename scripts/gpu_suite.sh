#!/usr/bin/env bash
# The GPU figures of docs/PERFORMANCE.md in one device call (run scripts/gpu_prepare.sh here first):
#   run(command="bash scripts/gpu_suite.sh 1", carry=[".gpu"], kind="nvidia-h100-x2")
# Phase 1: two lanes in parallel, one per GPU (each lane's figures and its anchor on the same card):
#   GPU0: sprintc bench XL at batch 128 (train eager/compiled/CUDA graph, clip fused and standard,
#         sampling CFG vs PDG, profiles), then the anchor at batch 128 (compiled modes).
#   GPU1: sprintc bench XL at batch 64 and 32 (compiled, CUDA graph), the 250-step sampling of 64 images
#         (diffusion.sample and the CUDA-graph loop), then the anchor at batch 64.
# Phase 2 (ends by ~480 s): DDP of the routed XL step at batch 128 per GPU on 1 GPU (GPU0, beside the
#   anchor at batch 32 on GPU1), then on 2 GPUs; then sprintc bench at batch 32 (GPU1, host-time
#   profiles) beside max-autotune on the routed step at batch 128 (GPU0).
# Phase a: the fused-attention A/B (GPU0 fused variant + anchor 128, GPU1 shipped code + anchor 64) and the
#   CUDA tests. Phase b: the CUDA tests, `sprintc train` on XL (1 GPU, CUDA-graph step) beside DDP on 1 GPU,
#   DDP on 2, FSDP2 training on 2 (synthetic latents). Phase c: DDP 1 then 2 GPUs alone, FSDP2 training,
#   then coordinate-descent tuning with the time left. Phase next: what is still unmeasured (max-autotune and
#   coordinate-descent tuning on GPU0; batch 64/32, sampling and the anchor at 32 on GPU1). Phase ddp: DDP alone;
#   ddp-ro: DDP with target.mode reduce-overhead (CUDA graphs per compiled region, the all-reduce between).
# Run D's phases (2026-11-26): attn (q/k prologue variants), tune (max-autotune, coordinate descent), tune2
#   (target.tune cold and warm, sampling, anchor), knobs (cheap Inductor settings); next2: what run D left open.
# Run E's: ddpg (the CUDA tests, the DDP step in a CUDA graph on 2 GPUs vs plain DDP, the 1-GPU graph step),
#   ddpg2 (`sprintc train` on XL latents: 2 GPUs with and without the captured DDP step, 1 GPU; the graph step again),
#   h100 (one H100: the anchor, the CUDA-graph step at 128 as shipped and with target.tune), h100b (the same at 64),
#   ddpg3 (after the capture moved to targets_api.CudaGraphStep: CUDA tests, bench step, DDP graph step).
# After session F: mktrain (one GPU: `sprintc train` on XL latents as shipped / with target.multi_kernel, then the
#   250-step sampling), emaab (one GPU: `sprintc train` with the EMA update deferred into the next captured step vs
#   the wheel of BASE, the bench step, the CUDA tests), h2 (two GPUs: `sprintc train` with the batch copied without a host
#   sync vs BASE on GPU 0, the CUDA tests, `sprintc train` under torchrun as shipped / with target.multi_kernel), h3 (a
#   profile of `sprintc train`'s steps, scripts/gpu_train_profile.py; torchrun with target.multi_kernel); emaevery (one
#   GPU: `sprintc train` with train.ema.every 1 against 10), like (one GPU: the anchor, then sprintc on the anchor's model,
#   scripts/xl_like_anchor.yaml, and on sit_xl_sprint); likeema: like, then the first pair of emaevery. Session I's qk:
#   the q/k RMSNorm + RoPE kernels (target.kernels) alone and in the training step against the code as shipped; qk2:
#   the same in the sampling step; session J's qk3 (the kernels rewritten, in training too), j1, j2 and j3 (the targets
#   on one H100 with them), jprof (a profile of the step with them, the 250-step sampling); qkprof: SDPA's cost by q/k/v layout, profiles of the training step with and without the kernels, their CUDA tests.
#   SPRINTC_QK_KERNELS (set by qk2, qk3 and qkprof) was removed in e11b418: from that commit on the kernels run in every
#   step and the variable is ignored, so those phases' "always" / "off" arms differ only where --no-kernels is passed.
# Session K's (one H100 each; not run C's k, k2, k3 of older commits): k1 (CUDA tests, the v-grad fold A/B, multi-kernel,
#   anchor), k2 (ptxas, sampling profiles, the step twice, `sprintc train`), k3 (whole-model compile), k4 (mix-order
#   reductions off against on), k5 (the step, the anchor, whole-model alone and with multi-kernel), k6 (whole-model
#   sampling, `sprintc train` whole-model with multi-kernel).
# Session O's (one H100): o1 (qkv_attention: CUDA tests, the kernel alone, the step at 128 / 64 / 32 against
#   SPRINTC_QKV_ATTENTION=0), o2 (its fault by arm, norm and RoPE; the arms alone). qkv_attention and
#   scripts/gpu_qkv_attention.py were removed afterwards (docs/PERFORMANCE.md, session O): these two phases run on a
#   checkout of d035882 (o1) or eb0495a (o2). o3: profiles of the routed step by block and as one graph; the anchor. o4: the CUDA tests as shipped.
# Session P's (one H100): p1 (the MLP's GELU in cuBLASLt's epilogue in sampling: its CUDA test, the sampling step A/B, the
#   250-step sampling), p2 (persistent row reductions up to 2048: CUDA test, training and sampling step A/B; on a checkout
#   of 3d4b5bf), p3 (the CUDA tests, the step at 128 / 64 / 32, the anchor at 128; on a checkout of 591cb1d). The
#   persistent rows of those two commits were removed afterwards (docs/PERFORMANCE.md, session P). p4: persistent rows by a
#   patch of Inductor's heuristic, A/B in training and sampling; p5: the CUDA tests as shipped, the step at 64 / 32; p6:
#   `sprintc train` on XL latents as shipped.
# Session Q's (one H100): q1 (the optimizer-overlap probe, scripts/gpu_overlap_probe.py; the anchor at 128), q2 (profiles
#   of `sprintc train`'s routed steps as shipped and with the EMA updated only at the end), q3 (idle time between
#   kernels: the bench's captured step, the loop without the EMA), q4 (the loop's loss read without waiting for the next
#   step: CUDA tests, `sprintc train` against BASE, the loop's idle time again).
# Session R's (one H100): r1 (the MLP's training step in cuBLASLt's GELU epilogues, sprintc/cublaslt.py: the ops and a
#   compiled sublayer alone, scripts/gpu_gelu_mlp.py; the step at 128 with SPRINTC_GELU_EPILOGUE 1 as shipped against
#   sample, alternating, one Inductor cache each, the dense step in the first pair; the CUDA tests), r2 (each of
#   cuBLASLt's candidate algorithms timed alone, scripts/gpu_gelu_algos.py; with the fastest kept: the sublayer, the
#   step A/B, the CUDA tests), r3 (the backward's DGELU without the bias gradient: candidates, the sublayer, the step
#   with SPRINTC_GELU_EPILOGUE sample / fwd / dgelu alternating, the CUDA tests; fwd and dgelu parse only at 980a148),
#   r4 (as shipped: the step at 128 routed and dense, sampling; `sprintc train` on XL latents; the anchor at 128; the
#   step at 64 / 32; the CUDA tests of the MLP), r5 (the routed step at 128 and the anchor in one call; the CUDA tests),
#   r6 (the MLP's CUDA tests after candidates refused by cuBLASLt are skipped and unaligned biases copied), r7 (two
#   GPUs: the DDP CUDA tests, the captured DDP step against plain DDP with the MLP's epilogues on each rank).
# Session L's (one H100): l1 (short_attention alone, CUDA tests, the step at 128 against BASE, batch 64 / 32); l2 and l3
#   (the split-head and the persistent kernel: their switch values no longer parse, so they are in commits b27b803 and
#   a4409f9 only), l4 (the kernel as shipped: CUDA tests, the step with it and with SDPA, the anchor, batch 64 / 32, whole-model + multi-kernel),
#   l5 (`sprintc train` on XL latents as shipped; whole-model + multi-kernel at batch 64), l6 (the anchor and the step at
#   64; whole-model + multi-kernel at 128, routed and dense), l7 (short_attention alone as shipped; the kernels' CUDA tests).
# Session M's (one H100): m1 (MasterAdamW's CUDA tests; the step with train.master_weights against without, the anchor),
#   m2 (`sprintc train` as shipped, whole-model + multi-kernel, batch 64 / 32), m3 (a profile of the step, the anchor at 64),
#   m4 (`sprintc train` with the EMA in the optimizer's kernel against BASE, the CUDA tests), m5 (the CUDA tests at the
#   last commit, the AdamW kernel alone, the step as shipped and the anchor), m6 (a launch per large weight against BASE),
#   m7 (the CUDA, kernel and optimizer tests at the last commit).
# Session N's (one H100): n1 (MasterAdamW reading the gradients in place: CUDA tests, its kernels alone, the step at
#   128 / 64 / 32 against BASE, the anchor at 128), n2 (the CUDA tests, `sprintc train`, the sampling step, the anchor
#   at 64), n3 (a profile of the step, whole model + multi-kernel, the anchor at 128), n4 (the CUDA tests and the step
#   at the last commit), n5 (the step and the anchor at 64 in one call).
# Session S's (s1-s5) and T's are described where they are defined below. Session T's (one H100): t1 (FlashAttention-2
#   against cuDNN for the 256-token attention), t2 (target.region_blocks 1 / 2 / 4), t3 (the glue with the fusion against
#   SPRINTC_GLUE_REGIONS=0; the compiled-against-eager CUDA tests), t4 (the routed step as shipped and the anchor at 128).
# Session U's and V's (one H100) are described where they are defined below. Session V's v1 and v2 (the tiled attention,
#   not kept) ran on a checkout of 61d02f2 and c8f9740.
# Session X's (one H100): x1 (q/k norm + RoPE in the routed attention's forward kernel, its backward's attention
#   recomputing q and k: the kernels alone, scripts/gpu_qkv_attention.py, the CUDA tests, the step against BASE; runs on a
#   checkout of a9f7a73, reverted in 6421481), x2 (SPRINTC_LOOPED_SUMS 0 against 1: the step at 128 and 64, profiled; the
#   CUDA tests); w5 again on 3fc26d0 (the code as shipped beside the anchor); x3 (the rest of the compiled CUDA tests).
# Session Y's (one H100): y1 (the q/k backward's loads pipelined: the kernels alone by tiles and stages, the step A/B),
#   y2 (the CUDA tests of the kernels with the new defaults); then w5 (the code as shipped beside the anchor); y3 (the
#   clip's norms in one _foreach_norm: step A/B against BASE, the optimizer's CUDA tests).
# Session Z's (one H100): z1 (the masters as bf16 weights + int16 low parts: step A/B against BASE, the optimizer's kernels
#   alone and its CUDA tests); then w5 (the code as shipped beside the anchor); z2 (the other targets: dense step,
#   sampling, batch 32; the anchor at 64 again); z3 (the routed step at 128 beside the anchor again).
# Session AA's (one H100): aa1 (the anchor's host time against its kernels' time; the routed step, `sprintc train`, the
#   optimizer's CUDA tests as shipped), aa4 (one H200: the routed step, the anchor's step at 64 and 128), aa3 (two H100s: every CUDA test as shipped), aa2 (the anchor's step at 64 in three processes, with kernel tables; clocks and power).
# Session AB's (one H100): ab1 (path drop's skip_middle: the routed step A/B against BASE, the optimizer's CUDA tests), ab2
#   and ab3 (the code as shipped beside the anchor's step at 64 and 128, `sprintc train`), ab4 (two GPUs: tests/test_cuda.py,
#   `sprintc train` under torchrun DDP), ab5 (profiles of the routed step at 64, base and new), ab6 (the row selection folded into the gather: A/B).
# Session AC's: ac1 (one H100: batch 32 and 64 beside the anchor's step, sampling at 128), ac2 (one H200: the same targets;
#   it ran on an H100), ac3 (the anchor at 64 again), ac4 (the fusion's middle share before the scatter: A/B),
#   ac5 (more of ac4's A/B at 64; the CUDA tests of the compiled step),
#   ac6 (ac4's A/B at 128 three times, profiles at 64),
#   ac7 (`sprintc train` on XL latents with it; the optimizer's CUDA tests), ac8 (those tests again), ac9 (a CPU
#   diagnosis of ac8's failure: scripts/gpu_diag_split.py of 6d3a8b1, run on a checkout of af67a7a).
# Session AD's (one H100, BASE=<the commit before>): ad1 (the routing glue's backward without atomic adds, the stream's
#   rows taken after its gather: profiles at 64 and the routed step at 64, base / new alternating; the CPU test that
#   failed in ac7 / ac8, on this host with the code as shipped), ad2 (the step at 128 base / new, at 64 beside the
#   anchor's step; the CUDA tests of the compiled step and sampling), ad3 (the adaLN modulation's matmuls alone: torch,
#   cuBLASLt's candidates, Triton tiles, scripts/gpu_skinny_mm.py; the step at 64 beside the anchor's), ad4 (the step at
#   64 and the anchor's, three processes each, alternating; the sampling step at 128), ad5 (matmuls tuned on GPU time
#   alone, CUDA graphs: the probe again, the step at 64 and 128 base / new, the tuned matmuls' CUDA test; that tuner,
#   eb7041d, was reverted in e97a61b: run ad5 on a checkout of eb7041d).
# Session AG's (one H100): ag1 (the clip norm's sums during the backward, base / new at 64; CUDA tests), ag2 (ag1
#   with the captured step's stream at high priority), ag3 (a failed capture's generators; the step at 64 beside
#   the anchor's), ag4 (that test without the fix, a control, and with it). The changes ag1 and ag2 measured were
#   reverted in 6b909cc: run ag1 on a checkout of df2cd5d and ag2 on one of 124713b (this checkout's wheel would be
#   the base's code, and its CUDA test `clip_norm` is gone).
# Session AH's (one H100): ah1-ah3 (train.moments_dtype bfloat16 against float32 beside the anchor's step at 64; its
#   kernel test; `sprintc train` at 128 with each). Session AI's: ai1 (two GPUs: every CUDA test of the code as shipped), ai2 and ai3 (one H100
#   each: the model as one graph at 64 against the regions, float32 and bf16 moments, after the anchor's step).
# Every piece has its own timeout and writes JSON/logs under $W; $OUT/results.tgz is re-packed after each
# piece, so what finished comes back even if the call is cut. GPU_SUITE_TINY=1: a CPU dry run of the
# same commands on the tiny spec (no anchor, no GPU).
set -u
PHASE=${1:-1}
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
REPO=$PWD
OUT=${OUT:-/tmp/gpu_suite_out}
W=/tmp/gpu_suite_work
rm -rf /tmp/site /tmp/site_base "$W"  # a stale install or old results from an earlier run on this machine would be read instead
mkdir -p "$OUT" "$W/prof"
T0=$(date +%s)
SPEC=$REPO/specs/sit_xl_sprint.yaml
if [ "${GPU_SUITE_TINY:-0}" = 1 ]; then WHL="$REPO"/.gpu/whl/sprintc-*.whl; else WHL="$REPO"/.gpu/whl/*.whl; fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site $WHL 2>&1 | tail -2
export PYTHONPATH=/tmp/site
cd /tmp   # import sprintc from /tmp/site, not from the checkout (whose sprintc/ lacks passes/ and targets/)

if [ "${GPU_SUITE_TINY:-0}" = 1 ]; then
  DEV="--device cpu --size tiny --steps 1 --warmup 0"; MODES=eager; TINY=1; DDPDEV="--device cpu --target eager --batch 2 --steps 1 --warmup 0"
  AMODES=eager; TMODES=eager
else
  DEV=""; MODES=eager,compiled,cudagraph; TINY=0; DDPDEV=""
  AMODES=compiled,cudagraph; TMODES=cudagraph  # the compiled modes; the CUDA-graph step alone
fi
gpu_info() { [ $TINY = 1 ] || nvidia-smi --query-gpu=index,name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$W/nvidia_smi.txt"; }
host_info() { [ $TINY = 1 ] || { lscpu | grep -E "Model name|^CPU\(s\)|MHz|Thread|Socket" ; nproc; } | tee "$W/cpu.txt"; }
versions() {  # what the figures ran on; importing the Inductor target checks the install too
  python3 -c "import torch, pydantic, sprintc.targets.inductor; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version() if torch.cuda.is_available() else None, 'gpus', torch.cuda.device_count(), 'pydantic', pydantic.__version__)" | tee "$W/versions.txt"
}

pack() { tar czf "$OUT/results.tgz" --exclude=latents --exclude=checkpoints -C "$W" . 2>/dev/null; }
piece() {  # piece NAME TIMEOUT GPU CMD...
  local name=$1 t=$2 gpu=$3; shift 3
  local s=$(date +%s)
  echo "[$(( s - T0 ))s] start $name (gpu $gpu, timeout $t)"
  CUDA_VISIBLE_DEVICES=$gpu timeout -k 10 "$t" "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "[$(( $(date +%s) - T0 ))s] end $name rc=$rc ($(( $(date +%s) - s ))s)" | tee -a "$W/rc.txt"
  [ $rc -ne 0 ] && tail -5 "$W/$name.log"
  pack
}
BENCH="python3 -m sprintc bench $SPEC $DEV"
anchor_host() {  # anchor_host NAME TIMEOUT BATCHES: the anchor's own SPRINT step, its host and kernel times
  # (scripts/gpu_anchor_host.py), on GPU 0 as piece NAME, its figures in $W/NAME.json; nothing in a CPU dry run
  [ $TINY = 1 ] && return 0
  piece "$1" "$2" 0 python3 "$REPO/scripts/gpu_anchor_host.py" "$REPO/.gpu/anchor_dit.py" --batch "$3" --json "$W/$1.json"
}
ddp_piece() {  # ddp_piece NAME TIMEOUT GPUS [gpu_ddp.py args]: the routed XL step, 128 per GPU, one process per GPU
  local name=$1 t=$2 gpus=$3; shift 3
  piece "$name" "$t" "$gpus" torchrun --nproc_per_node $(( $(tr -cd , <<< "$gpus" | wc -c) + 1 )) "$REPO/scripts/gpu_ddp.py" \
    "$SPEC" --batch 128 --steps 10 "$@" $DDPDEV --json "$W/$name.json"
}
anchor() { echo env OUT="$W/anchor_b$1" python3 "$REPO/.gpu/anchor_dit.py" --model XL --batch "$1" --steps 20 --modes compile; }
mkdir -p "$W/anchor_b128" "$W/anchor_b64" "$W/anchor_b32"

BASE=$([ "${GPU_SUITE_TINY:-0}" = 1 ] && echo digits_sprint || echo sit_xl_sprint)
latents() {  # synthetic latents shaped as the base spec's input (SD-VAE 4x32x32, 1000 classes for XL), a short spec
  python3 - "$W" "$BASE" <<'PY'
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
from sprintc.spec import load_spec
w, m = Path(sys.argv[1]), load_spec(sys.argv[2]).model
(w / "latents").mkdir(exist_ok=True)
g = torch.Generator().manual_seed(0)
for i in range(2):
    save_file({"latents": torch.randn(2048, m.input.channels, m.input.size, m.input.size, generator=g),
               "labels": torch.randint(0, m.num_classes, (2048,), generator=g)}, str(w / "latents" / f"shard{i}.safetensors"))
PY
  for d in ddp fsdp; do cat > "$W/xl_$d.yaml" <<YML
extends: $BASE
name: ${BASE}_$d
train:
  distributed: $d
  data: {kind: latents, path: $W/latents}
  stages:
    - {name: pretrain, steps: ${XL_STEPS:-60}, batch: ${XL_BATCH:-128}, lr: 1.0e-4, warmup: 10, routing: true}
    - {name: finetune, steps: ${XL_FT_STEPS:-20}, batch: ${XL_BATCH:-128}, lr: 1.0e-4, routing: false}
  log_every: 10
  checkpoint_every: 1000000
  keep_checkpoints: 1
YML
  done
}
qk_micro() {  # the kernels alone against Inductor's code (scripts/gpu_qk_kernels.py), then SPRINTC_QK_BLOCKS set to the tiles
  # with the least time per routed step (4 dense + 24 routed blocks at 128)
  piece qk_micro 120 0 python3 "$REPO/scripts/gpu_qk_kernels.py" --json "$W/qk_micro.json"
  best=$(python3 -c "
import json, collections
rows = json.load(open('$W/qk_micro.json')); t = collections.defaultdict(float)
for r in rows:
    if r['code'].startswith('kernels'): t[r['code'].split()[1]] += r['fwd_bwd_ms'] * (24 if r['tokens'] == 64 else 4)
print(min(t, key=t.get))" 2>/dev/null || echo "$1")
  echo "kernel tiles for the A/B: $best" | tee "$W/qk_best.txt"
  export SPRINTC_QK_BLOCKS=$best
}
train_setup() {  # train_setup BATCH [TINY_STEPS]: latents and the short spec for `sprintc $TRAIN` (60 routed, 20 full-token steps)
  [ $TINY = 1 ] && export XL_STEPS=${2:-2} XL_FT_STEPS=1 XL_BATCH=4
  [ $TINY = 0 ] && export XL_BATCH=$1 XL_STEPS=60 XL_FT_STEPS=20
  TRAIN="train --no-progress $([ $TINY = 1 ] && echo --device cpu)"
  latents
}
train_each() {  # train_each TIMEOUT NAME:SPEC...: `sprintc $TRAIN $W/SPEC.yaml` on GPU 0 in turn, each run's metrics kept
  local t=$1 r name run; shift
  for r in "$@"; do
    name=${r%%:*} run="$W/run_${r%%:*}"
    piece "train_$name" "$t" 0 python3 -m sprintc $TRAIN "$W/${r#*:}.yaml" --out "$run"
    [ -f "$run/metrics.jsonl" ] && cp "$run/metrics.jsonl" "$W/train_${name}_metrics.jsonl"
    rm -rf "$run"
  done
}
base_wheel() {  # install the wheel of BASE (`BASE=REV scripts/gpu_prepare.sh`) into /tmp/site_base, for A/B runs
  rm -rf /tmp/site_base && python3 -m pip install -q --no-index --no-deps --target /tmp/site_base "$REPO"/.gpu/base/sprintc-*.whl 2>&1 | tail -2
}
ab_bench() {  # ab_bench base|new NAME TIMEOUT ARGS...: `$BENCH ARGS` as piece NAME with the wheel of BASE (base_wheel) or
  # this one; one Inductor cache per wheel (a shared one served the base's compiled kernels to the new wheel, session J)
  local wheel=$1 name=$2 t=$3; shift 3
  PYTHONPATH=$([ "$wheel" = base ] && echo /tmp/site_base:/tmp/site || echo /tmp/site) TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_$wheel \
    piece "$name" "$t" 0 $BENCH "$@"
}
ab_routed() {  # ab_routed PREFIX: the routed CUDA-graph step with the wheel of BASE and this one, alternating: at 128
  # twice (the first pass compiling cold), then at 64 once each; pieces PREFIX_base_1, PREFIX_new_1, ..., PREFIX_new_b64
  local r wheel
  for r in 1 2; do
    for wheel in base new; do
      ab_bench $wheel "${1}_${wheel}_$r" $([ $r = 1 ] && echo 110 || echo 60) --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/${1}_${wheel}_$r.json"
    done
  done
  for wheel in base new; do
    ab_bench $wheel "${1}_${wheel}_b64" 80 --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/${1}_${wheel}_b64.json"
  done
}
ab_rounds() {  # ab_rounds PREFIX BATCH "ROUNDS" FIRST LATER: the routed CUDA-graph step at BATCH with the wheel of BASE and
  # this one, alternating, once per round; timeout FIRST in the first round (the compiles are cold), LATER after;
  # pieces PREFIX_base_bBATCH_ROUND, PREFIX_new_bBATCH_ROUND
  local r wheel rounds=$3
  for r in $rounds; do
    for wheel in base new; do
      ab_bench $wheel "${1}_${wheel}_b${2}_$r" $([ "$r" = "${rounds%% *}" ] && echo "$4" || echo "$5") --batch "$2" --modes $TMODES \
        --parts train --graphs routed --json "$W/${1}_${wheel}_b${2}_$r.json"
    done
  done
}
ab_profiles() {  # ab_profiles PREFIX SUFFIX TIMEOUT: a profile of the routed step at 64 (three replays) with the wheel of
  # BASE and this one, one Inductor cache each; pieces PREFIX_base_SUFFIX, PREFIX_new_SUFFIX
  local wheel
  for wheel in base new; do
    ab_bench $wheel "${1}_${wheel}_$2" "$3" --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/${1}_${wheel}_$2.json" \
      --profile "$W/prof" --tag "${wheel}_"
  done
}
profile_and_optim_tests() {  # profile_and_optim_tests NAME END: a profile of the routed step at 64 with this wheel
  # (piece NAME), then the CUDA tests of the optimizer and the captured step until END s into the call
  ab_bench new "$1" 110 --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/$1.json" \
    --profile "$W/prof" --tag new_
  piece pytest_cuda $(( $2 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "adamw or master or cuda_graph_training" -p no:cacheprovider --rootdir "$REPO"
}
ab_phase() {  # ab_phase PREFIX TESTS: an A/B phase (BASE=REV scripts/gpu_prepare.sh): ab_routed PREFIX, then the CUDA
  # tests selected by the pytest expression TESTS with the time left
  gpu_info
  versions
  base_wheel
  ab_routed "$1"
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "$2" -p no:cacheprovider --rootdir "$REPO"
}
ab_at_64() {  # ab_at_64 PREFIX: session AG's A/B at 64 (BASE=REV scripts/gpu_prepare.sh): profiles of the routed step,
  # base / new, the step twice more alternating, then the optimizer's and the captured step's CUDA tests with the time left
  gpu_info
  versions
  base_wheel
  ab_profiles "$1" prof 110
  ab_rounds "$1" 64 "2 3" 75 75
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "clip_norm or adamw or master or cuda_graph_training" -p no:cacheprovider --rootdir "$REPO"
}
moments_beside_anchor() {  # moments_beside_anchor PREFIX FIRST SECOND: session AH's rounds at 64: the anchor's SPRINT
  # step (scripts/gpu_anchor_host.py), then the routed step with train.moments_dtype FIRST and SECOND (--moments), twice
  local r m
  anchor_host anchor_host_64_1 150 64
  for r in 1 2; do
    for m in $2 $3; do
      piece $1_${m}_b64_$r $([ $r = 1 ] && [ $m = $2 ] && echo 90 || echo 60) 0 $BENCH --batch 64 --modes $TMODES --parts train \
        --graphs routed --moments $m --json "$W/$1_${m}_b64_$r.json"
    done
    [ $r = 1 ] && anchor_host anchor_host_64_2 70 64
  done
}
optim_tests() {  # optim_tests END: the optimizer's CUDA tests and the captured training step's, until END s into the call
  piece pytest_cuda $(( $1 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_optim.py" \
    "$REPO/tests/test_cuda.py" -k "optim or adamw or clip or ema or master or cuda_graph_training" -p no:cacheprovider \
    --rootdir "$REPO"
}
bench_variant() {  # bench_variant NAME 'YAML': $W/NAME.yaml, the bench's spec with YAML on top
  printf 'extends: %s\nname: %s\n%s\n' "$SPEC" "$1" "$2" > "$W/$1.yaml"
}
ab_train() {  # ab_train TIMEOUT: `sprintc train` on XL latents at 128 on GPU 0, this wheel (new) against the wheel of
  # BASE (base, `BASE=REV scripts/gpu_prepare.sh`), alternating base, new, base, new on the card
  ls "$REPO"/.gpu/base/sprintc-*.whl >/dev/null 2>&1 || { echo "no .gpu/base wheel: run BASE=REV scripts/gpu_prepare.sh"; exit 1; }
  base_wheel
  train_setup 128
  for r in base_1 new_1 base_2 new_2; do
    PYTHONPATH=$([ "${r%_*}" = base ] && echo /tmp/site_base:/tmp/site || echo /tmp/site) train_each "$1" "$r:xl_ddp"
  done
}
variant() {  # variant NAME 'YAML': $W/NAME.yaml, the short spec xl_ddp.yaml with YAML on top
  printf 'extends: %s\nname: %s\n%s\n' "$W/xl_ddp.yaml" "$1" "$2" > "$W/$1.yaml"
}
train_ddp2() {  # train_ddp2 TIMEOUT NAME:SPEC: `sprintc $TRAIN $W/SPEC.yaml` under torchrun on GPUs 0 and 1; a rank's abort
  # at exit ("terminate called") is counted in rc.txt
  local name=${2%%:*} run="$W/run_ddp2_${2%%:*}"
  piece "train_ddp2_$name" "$1" 0,1 torchrun --nproc_per_node 2 -m sprintc $TRAIN "$W/${2#*:}.yaml" --out "$run"
  grep -c "terminate called" "$W/train_ddp2_$name.log" | sed "s/^/train_ddp2_$name aborts: /" | tee -a "$W/rc.txt"
  [ -f "$run/metrics.jsonl" ] && cp "$run/metrics.jsonl" "$W/train_ddp2_${name}_metrics.jsonl"
  rm -rf "$run"
}
if [ "$PHASE" = a ]; then  # the A/B of the fused QK-norm + RoPE attention (GPU 0) against the shipped one (GPU 1), CUDA tests
  # (as run on 2026-11-25, except that the shipped attention then came from a patch script and the rows at
  # batch 64 / 32 ran with the fused variant)
  gpu_info
  versions
  (
    piece ab_fused_b128 270 0 python3 "$REPO/scripts/gpu_ab_fused_attention.py" bench $SPEC $DEV --batch 128 --modes $AMODES --parts train,sample --json "$W/ab_fused_b128.json" --profile "$W/prof"
    [ $TINY = 0 ] && piece anchor_b128 $(( 480 - ($(date +%s) - T0) )) 0 $(anchor 128)
    piece bench_b32 $(( 580 - ($(date +%s) - T0) )) 0 $BENCH --batch 32 --modes $AMODES --parts train --json "$W/bench_b32.json"
  ) &
  (
    piece pytest_cuda 150 1 python3 -m pytest -q -p no:cacheprovider "$REPO/tests/test_cuda.py" "$REPO/tests/test_model.py"
    piece bench_b128 170 1 $BENCH --batch 128 --modes $AMODES --parts train --json "$W/bench_b128.json"
    piece bench_b64 110 1 $BENCH --batch 64 --modes $AMODES --parts train --json "$W/bench_b64.json"
    [ $TINY = 0 ] && piece anchor_b64 $(( 585 - ($(date +%s) - T0) )) 1 $(anchor 64)
  ) &
  wait
elif [ "$PHASE" = b ]; then  # this session's second call: sprintc train on XL (1 GPU, CUDA graphs), DDP 1 -> 2, FSDP2
  [ $TINY = 1 ] && export XL_STEPS=2 XL_FT_STEPS=1 XL_BATCH=4
  latents
  TRAIN="train --no-progress $([ $TINY = 1 ] && echo --device cpu)"
  ddp_piece ddp_w1 130 0 &
  (
    piece pytest_cuda 90 1 python3 -m pytest -q -p no:cacheprovider "$REPO/tests/test_cuda.py"
    piece train_xl 200 1 python3 -m sprintc $TRAIN "$W/xl_ddp.yaml" --out "$W/run_xl1"
  ) &
  wait
  ddp_piece ddp_w2 140 0,1
  [ $TINY = 0 ] && XL_BATCH=256 XL_STEPS=30 XL_FT_STEPS=10 latents
  piece train_fsdp $(( 560 - ($(date +%s) - T0) )) 0,1 torchrun --nproc_per_node 2 -m sprintc $TRAIN "$W/xl_fsdp.yaml" --out "$W/run_fsdp"
  [ $TINY = 0 ] && piece bench_b128_cdt $(( 585 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes cudagraph --graphs routed --parts train --inductor-config coordinate_descent_tuning=True --json "$W/bench_b128_cdt.json"
  for r in run_xl1 run_fsdp; do [ -f "$W/$r/metrics.jsonl" ] && cp "$W/$r/metrics.jsonl" "$W/${r}_metrics.jsonl"; rm -rf "$W/$r/checkpoints"; done
  rm -rf "$W/latents"
elif [ "$PHASE" = c ]; then  # this session's third call: DDP 1 -> 2 with nothing beside it, FSDP2 training on 2 GPUs
  XL_BATCH=256 XL_STEPS=30 XL_FT_STEPS=10
  [ $TINY = 1 ] && XL_BATCH=4 XL_STEPS=2 XL_FT_STEPS=1
  export XL_BATCH XL_STEPS XL_FT_STEPS
  latents
  TRAIN="train --no-progress $([ $TINY = 1 ] && echo --device cpu)"
  ddp_piece ddp_w1 120 0
  ddp_piece ddp_w2 110 0,1
  piece train_fsdp $(( 400 - ($(date +%s) - T0) )) 0,1 torchrun --nproc_per_node 2 -m sprintc $TRAIN "$W/xl_fsdp.yaml" --out "$W/run_fsdp"
  [ -f "$W/run_fsdp/metrics.jsonl" ] && cp "$W/run_fsdp/metrics.jsonl" "$W/run_fsdp_metrics.jsonl"
  rm -rf "$W/run_fsdp/checkpoints" "$W/latents"
  [ $TINY = 0 ] && piece bench_b128_cdt $(( 470 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes cudagraph --graphs routed --parts train --inductor-config coordinate_descent_tuning=True --json "$W/bench_b128_cdt.json"
elif [ "$PHASE" = next ]; then  # what is still unmeasured (docs/PERFORMANCE.md, "Not measured"), one call
  (
    [ $TINY = 0 ] && piece bench_b128_autotune 330 0 $BENCH --batch 128 --modes cudagraph --graphs routed --parts train --mode max-autotune-no-cudagraphs --json "$W/bench_b128_autotune.json"
    [ $TINY = 0 ] && piece bench_b128_cdt $(( 580 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes cudagraph --graphs routed --parts train --inductor-config coordinate_descent_tuning=True --json "$W/bench_b128_cdt.json"
  ) &
  (
    piece bench_b64_32 200 1 $BENCH --batch 64,32 --modes $AMODES --parts train --json "$W/bench_b64_32.json"
    piece sample_b128 100 1 $BENCH --batch 128 --modes $AMODES --parts sample --json "$W/sample_b128.json"
    [ $TINY = 0 ] && piece anchor_b32 $(( 585 - ($(date +%s) - T0) )) 1 $(anchor 32)
  ) &
  wait
elif [ "$PHASE" = attn ]; then  # run D: the q/k norm + RoPE variants of scripts/gpu_attn_variants.py
  # one XL block fwd+bwd per variant on both GPUs (v0 = shipped on each), then the full training step at batch 128
  # (CUDA graph) of v0 and the two best variants on GPU 0, the anchor and v0 on GPU 1
  AV="python3 $REPO/scripts/gpu_attn_variants.py"
  gpu_info
  versions
  if [ $TINY = 1 ]; then
    piece check 100 0 $AV check
    printf 'v1\nv2\n' > "$W/picked.txt"
  else
    piece micro_a 260 0 env TORCH_LOGS=output_code $AV micro --variants v0,v1,v2 --json "$W/micro_a.json" &
    piece micro_b 260 1 env TORCH_LOGS=output_code $AV micro --variants v0,v3,v4 --json "$W/micro_b.json" &
    wait
    python3 - "$W" > "$W/picked.txt" <<'PY'
import json, sys
from pathlib import Path
base = {}  # each lane's own v0, so variants are compared on the GPU they ran on
for f in ("micro_a.json", "micro_b.json"):
    p = Path(sys.argv[1]) / f
    if p.exists():
        rs = json.load(open(p))
        v0 = {r["routed"]: r["ms"] for r in rs if r["variant"] == "v0"}
        for r in rs:
            if r["variant"] != "v0" and v0:
                base.setdefault(r["variant"], []).append(r["ms"] / v0[r["routed"]])
score = sorted((sum(v) / len(v), k) for k, v in base.items())
print("\n".join(k for _, k in score[:2]) or "v1\nv2")
PY
  fi
  cat "$W/picked.txt"
  FULL="--batch 128 --modes cudagraph --parts train $DEV"
  (
    piece full_v0 150 0 $AV --variant v0 bench $SPEC $FULL --json "$W/full_v0.json"
    for v in $(cat "$W/picked.txt"); do piece full_$v 150 0 $AV --variant $v bench $SPEC $FULL --json "$W/full_$v.json"; done
  ) &
  (
    [ $TINY = 0 ] && piece anchor_b128 200 1 $(anchor 128)
    piece full_v0_gpu1 150 1 $AV --variant v0 bench $SPEC $FULL --json "$W/full_v0_gpu1.json"
  ) &
  wait
elif [ "$PHASE" = tune ]; then  # run D: Inductor's own tuning, each with the time it needs (the shipped attention)
  # GPU 0: max-autotune (Triton GEMM templates with fused epilogues + coordinate descent); GPU 1: the default
  # compile as baseline, then coordinate-descent tuning of the Triton kernels alone
  gpu_info
  piece bench_b128_autotune 560 0 $BENCH --batch 128 --modes $TMODES --parts train --mode max-autotune-no-cudagraphs --json "$W/bench_b128_autotune.json" &
  (
    piece bench_b128 150 1 $BENCH --batch 128 --modes $TMODES --parts train --json "$W/bench_b128.json"
    piece bench_b128_cdt $(( 570 - ($(date +%s) - T0) )) 1 $BENCH --batch 128 --modes $TMODES --parts train --inductor-config coordinate_descent_tuning=True --json "$W/bench_b128_cdt.json"
  ) &
  wait
elif [ "$PHASE" = tune2 ]; then  # run D: target.tune (`--tune`) cold and with the cache warm, beside the anchor and sampling
  gpu_info
  (
    [ $TINY = 0 ] && piece anchor_b128 200 0 $(anchor 128)
    piece sample_b128 120 0 $BENCH --batch 128 --modes $AMODES --parts sample --json "$W/sample_b128.json"
    piece sample_b128_tune $(( 480 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $AMODES --parts sample --tune --json "$W/sample_b128_tune.json"
  ) &
  (
    piece bench_b128 150 1 $BENCH --batch 128 --modes $TMODES --parts train --json "$W/bench_b128.json"
    piece bench_b128_tune 330 1 $BENCH --batch 128 --modes $TMODES --parts train --tune --json "$W/bench_b128_tune.json"
    piece bench_b128_tune_warm $(( 485 - ($(date +%s) - T0) )) 1 $BENCH --batch 128 --modes $TMODES --parts train --tune --json "$W/bench_b128_tune_warm.json"
  ) &
  wait
elif [ "$PHASE" = knobs ]; then  # run D: Inductor settings that cost no long compile, each against a baseline on its GPU
  knob() {  # knob GPU NAME TIMEOUT [KEY=VALUE]: the routed and dense CUDA-graph step at batch 128
    piece knob_$2 $3 $1 $BENCH --batch 128 --modes $TMODES --parts train ${4:+--inductor-config $4} --json "$W/knob_$2.json"
  }
  (
    knob 0 base0 100
    knob 0 combo 100 combo_kernels=True
    knob 0 multi 100 triton.multi_kernel=1
    knob 0 pointwise $(( 330 - ($(date +%s) - T0) )) max_autotune_pointwise=True
  ) &
  (
    knob 1 base1 100
    knob 1 aggressive 100 aggressive_fusion=True
    knob 1 ndtiling 100 triton.prefer_nd_tiling=True
    knob 1 tilered $(( 330 - ($(date +%s) - T0) )) triton.tile_reductions=True
  ) &
  wait
elif [ "$PHASE" = next2 ]; then  # after run D: multi-kernel again and with target.tune (GPU 0); batch 64 tuned vs the anchor (GPU 1)
  (
    piece next2_base 110 0 $BENCH --batch 128 --modes $TMODES --parts train --json "$W/next2_base.json"
    piece next2_multi 110 0 $BENCH --batch 128 --modes $TMODES --parts train --inductor-config triton.multi_kernel=1 --json "$W/next2_multi.json"
    piece next2_tune_multi $(( 570 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $TMODES --parts train --tune --inductor-config triton.multi_kernel=1 --json "$W/next2_tune_multi.json"
  ) &
  (
    [ $TINY = 0 ] && piece anchor_b64 200 1 $(anchor 64)
    piece next2_b64 110 1 $BENCH --batch 64 --modes $TMODES --parts train --json "$W/next2_b64.json"
    piece next2_b64_tune $(( 570 - ($(date +%s) - T0) )) 1 $BENCH --batch 64 --modes $TMODES --parts train --tune --json "$W/next2_b64_tune.json"
  ) &
  wait
elif [ "$PHASE" = ddpg ]; then  # run E: the DDP step captured in a CUDA graph (train.StepRunner), vs the plain DDP step
  gpu_info
  versions
  piece pytest_cuda 240 0,1 python3 -m pytest -p no:cacheprovider -rs "$REPO/tests/test_cuda.py"
  ddp_piece ddpg_w2 120 0,1 --cuda-graph
  ddp_piece ddp_w2 100 0,1
  ddp_piece ddpg_w1 $(( 585 - ($(date +%s) - T0) )) 0 --cuda-graph
elif [ "$PHASE" = ddpg2 ]; then  # run E: `sprintc train` on XL latents, 2 GPUs (DDP, CUDA-graph step) then 1 GPU
  [ $TINY = 1 ] && export XL_STEPS=2 XL_FT_STEPS=1 XL_BATCH=4
  TRAIN="train --no-progress $([ $TINY = 1 ] && echo --device cpu)"
  [ $TINY = 0 ] && XL_BATCH=256 XL_STEPS=60 XL_FT_STEPS=20
  latents
  variant xl_ddp_nograph 'target: {cuda_graphs: false}'
  piece train_ddp2 200 0,1 torchrun --nproc_per_node 2 -m sprintc $TRAIN "$W/xl_ddp.yaml" --out "$W/run_ddp2"
  piece train_ddp2_nograph 150 0,1 torchrun --nproc_per_node 2 -m sprintc $TRAIN "$W/xl_ddp_nograph.yaml" --out "$W/run_ddp2_nograph"
  [ $TINY = 0 ] && XL_BATCH=128 latents
  piece train_1 130 0 python3 -m sprintc $TRAIN "$W/xl_ddp.yaml" --out "$W/run_1"
  for r in run_ddp2 run_ddp2_nograph run_1; do [ -f "$W/$r/metrics.jsonl" ] && cp "$W/$r/metrics.jsonl" "$W/${r}_metrics.jsonl"; rm -rf "$W/$r/checkpoints"; done
  rm -rf "$W/latents"
  ddp_piece ddpg_w2 $(( 585 - ($(date +%s) - T0) )) 0,1 --cuda-graph  # again, and it must now exit
elif [ "$PHASE" = ddpg3 ]; then  # run E, after the step capture moved to targets_api.CudaGraphStep: the CUDA tests, the bench's
  # CUDA-graph step at 128, the captured DDP step on 2 GPUs (about 6 minutes)
  gpu_info
  piece pytest_cuda 200 0,1 python3 -m pytest -p no:cacheprovider -rs "$REPO/tests/test_cuda.py"
  piece bench_b128 120 0 $BENCH --batch 128 --modes $TMODES --parts train --json "$W/bench_b128.json"
  ddp_piece ddpg_w2 $(( 400 - ($(date +%s) - T0) )) 0,1 --cuda-graph
elif [ "$PHASE" = h100 ] || [ "$PHASE" = h100b ]; then  # run E, one GPU (kind nvidia-h100-x1): the anchor, then the routed
  # and dense CUDA-graph step as shipped and with target.tune, in sequence on the same card; h100 at batch 128, h100b at 64
  B=$([ "$PHASE" = h100 ] && echo 128 || echo 64)
  gpu_info
  [ $TINY = 0 ] && piece anchor_b$B 200 0 $(anchor $B)
  piece bench_b$B 150 0 $BENCH --batch $B --modes $TMODES --parts train --json "$W/bench_b$B.json"
  piece bench_b${B}_tune $(( 585 - ($(date +%s) - T0) )) 0 $BENCH --batch $B --modes $TMODES --parts train --tune --json "$W/bench_b${B}_tune.json"
elif [ "$PHASE" = halves ]; then  # session F, one GPU: attention variant v5 (q/k channels reordered so RoPE rotates
  # contiguous halves) against v0 (the code as shipped at that commit): whole CUDA-graph step at 128 and 64, one block
  # micro-benchmark, then 128 again in the other order with the sampling step
  AV="python3 $REPO/scripts/gpu_attn_variants.py"
  gpu_info
  versions
  [ $TINY = 1 ] && piece check 100 0 $AV check
  for B in 128 64; do
    for v in v0 v5; do piece full_${v}_b$B 120 0 $AV --variant $v bench $SPEC --batch $B --modes $TMODES --parts train $DEV --json "$W/full_${v}_b$B.json"; done
  done
  [ $TINY = 0 ] && piece micro 200 0 env TORCH_LOGS=output_code $AV micro --variants v0,v5 --json "$W/micro.json"
  for v in v5 v0; do
    piece again_${v}_b128 $(( 585 - ($(date +%s) - T0) )) 0 $AV --variant $v bench $SPEC --batch 128 --modes $TMODES --parts train,sample $DEV --json "$W/again_${v}_b128.json"
  done
elif [ "$PHASE" = next3 ]; then  # session F, one GPU: the anchor, then the CUDA-graph step at 128 as shipped, with
  # triton.multi_kernel, and with target.tune plus multi_kernel, in sequence on the same card
  gpu_info
  versions
  [ $TINY = 0 ] && piece anchor_b128 200 0 $(anchor 128)
  piece next3_base 110 0 $BENCH --batch 128 --modes $TMODES --parts train --json "$W/next3_base.json"
  piece next3_multi 120 0 $BENCH --batch 128 --modes $TMODES --parts train --inductor-config triton.multi_kernel=1 --json "$W/next3_multi.json"
  piece next3_tune_multi $(( 585 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $TMODES --parts train --tune --inductor-config triton.multi_kernel=1 --json "$W/next3_tune_multi.json"
elif [ "$PHASE" = next3b ]; then  # the rest of next3 (its anchor took the time): tune plus multi_kernel, then tune alone
  gpu_info
  piece next3_tune_multi 330 0 $BENCH --batch 128 --modes $TMODES --parts train --tune --inductor-config triton.multi_kernel=1 --json "$W/next3_tune_multi.json"
  piece next3_tune $(( 585 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $TMODES --parts train --tune --json "$W/next3_tune.json"
elif [ "$PHASE" = mk ]; then  # session F, one GPU: target.multi_kernel (now the default) against --no-multi-kernel, same
  # card: the CUDA tests, the CUDA-graph step and sampling step at 128 and 64, and why tune plus multi-kernel fails to compile
  gpu_info
  versions
  piece pytest_cuda 200 0 python3 -m pytest -p no:cacheprovider -rs "$REPO/tests/test_cuda.py"
  for B in 128 64; do
    piece mk_on_b$B 120 0 $BENCH --batch $B --modes $TMODES --parts train,sample --json "$W/mk_on_b$B.json"
    piece mk_off_b$B 120 0 $BENCH --batch $B --modes $TMODES --parts train,sample --no-multi-kernel --json "$W/mk_off_b$B.json"
  done
  piece tune_mk $(( 585 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --tune --inductor-config triton.multi_kernel=1 --json "$W/tune_mk.json"
elif [ "$PHASE" = mk2 ]; then  # session F, one GPU: does a later process fail on multi-kernel graphs read from the FX graph
  # cache (global setting, cache on: twice), and does target.multi_kernel (regions compiled without the cache) run twice
  gpu_info
  for i in 1 2; do piece cache_mk_$i 120 0 $BENCH --batch 64 --modes $TMODES --parts sample --inductor-config triton.multi_kernel=1 --json "$W/cache_mk_$i.json"; done
  for i in 1 2; do piece spec_mk_$i 150 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --multi-kernel --json "$W/spec_mk_$i.json"; done
  piece spec_mk_b64 $(( 585 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --modes $TMODES --parts sample --multi-kernel --json "$W/spec_mk_b64.json"
elif [ "$PHASE" = mk3 ]; then  # session F, one GPU: the training step at 128 without multi-kernel, with target.multi_kernel
  # (no FX graph cache) and with the global setting (cache on, a first process), alternating on the same card
  gpu_info
  TRAIN128="--batch 128 --modes $TMODES --parts train"
  piece mk3_off_1 120 0 $BENCH $TRAIN128 --json "$W/mk3_off_1.json"
  piece mk3_spec_1 130 0 $BENCH $TRAIN128 --multi-kernel --json "$W/mk3_spec_1.json"
  piece mk3_global 130 0 $BENCH $TRAIN128 --inductor-config triton.multi_kernel=1 --json "$W/mk3_global.json"
  piece mk3_off_2 120 0 $BENCH $TRAIN128 --json "$W/mk3_off_2.json"
  piece mk3_spec_2 $(( 585 - ($(date +%s) - T0) )) 0 $BENCH $TRAIN128 --multi-kernel --json "$W/mk3_spec_2.json"
elif [ "$PHASE" = b32 ]; then  # session F, one GPU: batch 32 (the reference's per-GPU batch): the anchor, then the
  # CUDA-graph step as shipped and with target.multi_kernel, in sequence on the same card
  gpu_info
  [ $TINY = 0 ] && piece anchor_b32 220 0 $(anchor 32)
  piece b32_off 120 0 $BENCH --batch 32 --modes $TMODES --parts train --json "$W/b32_off.json"
  piece b32_mk $(( 585 - ($(date +%s) - T0) )) 0 $BENCH --batch 32 --modes $TMODES --parts train --multi-kernel --json "$W/b32_mk.json"
elif [ "$PHASE" = ddp4 ]; then  # session F, 4 GPUs: the DDP step in a CUDA graph on 4, then 1 and 2 GPUs (within ~300 s)
  gpu_info
  versions
  ddp_piece ddpg_w4 130 0,1,2,3 --cuda-graph
  ddp_piece ddpg_w1 80 0 --cuda-graph
  ddp_piece ddpg_w2 $(( 300 - ($(date +%s) - T0) )) 0,1 --cuda-graph
elif [ "$PHASE" = mktrain ]; then  # after session F, one GPU: `sprintc train` on XL latents at 128 (CUDA-graph step) as
  # shipped, then with target.multi_kernel, then as shipped again (the bench measured multi_kernel; training did not)
  gpu_info
  versions
  train_setup 128
  variant xl_mk 'target: {multi_kernel: true}'
  train_each 150 off_1:xl_ddp mk:xl_mk off_2:xl_ddp
  rm -rf "$W/latents"
  # then, with the time left, the 250-step sampling of 64 images (not run on an H100 since run A)
  [ $(( 585 - ($(date +%s) - T0) )) -gt 90 ] && piece sample250 $(( 585 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --parts sample250,sample250g --images 64 --sample-steps $([ $TINY = 1 ] && echo 3 || echo 250) --json "$W/sample250.json"
elif [ "$PHASE" = emaab ]; then  # session H, one GPU: `sprintc train` on XL latents at 128 with the EMA update deferred into
  # the next captured step (this wheel) against the update after each step (the wheel of BASE, scripts/gpu_prepare.sh),
  # alternating on the card; then the bench's CUDA-graph step and the CUDA tests
  gpu_info
  versions
  ab_train 150
  rm -rf "$W/latents"
  piece bench_b128 120 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/bench_b128.json"
  piece pytest_cuda $(( 585 - ($(date +%s) - T0) )) 0 python3 -m pytest -p no:cacheprovider -rs "$REPO/tests/test_cuda.py"
elif [ "$PHASE" = h2 ]; then  # session H, two GPUs: `sprintc train` at 128 on GPU 0 with the batch copied without a host sync
  # (this wheel) against the blocking copy (the wheel of BASE), alternating; the CUDA tests on both GPUs; `sprintc train`
  # under torchrun on 2 GPUs (must end with status 0 on NCCL), then with target.multi_kernel
  gpu_info
  versions
  ab_train 130
  piece pytest_cuda 170 0,1 python3 -m pytest -p no:cacheprovider -rs "$REPO/tests/test_cuda.py"
  [ $TINY = 0 ] && export XL_BATCH=256
  latents
  variant xl_ddp_mk 'target: {multi_kernel: true}'
  for r in off:xl_ddp mk:xl_ddp_mk; do
    left=$(( 585 - ($(date +%s) - T0) ))
    [ $left -lt 40 ] && break
    train_ddp2 $([ $left -gt 160 ] && echo 160 || echo $left) "$r"
  done
  rm -rf "$W/latents"
elif [ "$PHASE" = h3 ]; then  # session H, two GPUs: a torch.profiler view of `sprintc train`'s routed steps at 128 (GPU 0),
  # then `sprintc train` under torchrun on 2 GPUs with target.multi_kernel
  gpu_info
  train_setup 128 45  # the profile's schedule waits 35 steps, warms up 3 and records 5
  piece trainprof 150 0 python3 "$REPO/scripts/gpu_train_profile.py" "$W/xl_ddp.yaml" "$W/run_prof" "$W/trainprof.txt"
  [ -f "$W/run_prof/metrics.jsonl" ] && cp "$W/run_prof/metrics.jsonl" "$W/trainprof_metrics.jsonl"
  rm -rf "$W/run_prof"
  [ "${PROFILE_ONLY:-0}" = 1 ] && { rm -rf "$W/latents"; pack; cat "$W/trainprof.txt"; exit 0; }
  [ $TINY = 0 ] && export XL_BATCH=256
  [ $TINY = 1 ] && export XL_STEPS=2
  latents
  variant xl_ddp_mk 'target: {multi_kernel: true}'
  train_ddp2 $(( 400 - ($(date +%s) - T0) )) mk:xl_ddp_mk
  rm -rf "$W/latents"
elif [ "$PHASE" = emaevery ]; then  # after session H, one GPU: `sprintc train` on XL latents at 128 with the EMA updated every
  # step (as shipped) and every 10 steps (train.ema.every: 10), alternating on the card
  gpu_info
  versions
  train_setup 128
  variant xl_ema10 'train: {ema: {every: 10}}'
  train_each 130 every1_1:xl_ddp every10_1:xl_ema10 every1_2:xl_ddp every10_2:xl_ema10
  rm -rf "$W/latents"
elif [ "$PHASE" = like ] || [ "$PHASE" = likeema ]; then  # one GPU: the anchor at 128, then sprintc on the anchor's own
  # model (scripts/xl_like_anchor.yaml: no q/k norm, no RoPE, random drop, no clipping) and on sit_xl_sprint; likeema
  # then runs emaevery's first pair (`sprintc train` with ema.every 1, then 10) in what is left of the call
  gpu_info
  versions
  [ $TINY = 0 ] && piece anchor_b128 220 0 $(anchor 128)
  piece like_b128 140 0 python3 -m sprintc bench "$REPO/scripts/xl_like_anchor.yaml" $DEV --batch 128 --modes $TMODES --parts train,sample --json "$W/like_b128.json"
  piece sit_b128 $(( $([ "$PHASE" = likeema ] && echo 390 || echo 585) - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --json "$W/sit_b128.json"
  if [ "$PHASE" = likeema ]; then
    train_setup 128
    variant xl_ema10 'train: {ema: {every: 10}}'
    train_each 100 every1_1:xl_ddp every10_1:xl_ema10
    rm -rf "$W/latents"
  fi
elif [ "$PHASE" = qk ]; then  # session I, one GPU: sprintc's q/k RMSNorm + RoPE kernels (target.kernels): the CUDA tests,
  # the kernels alone against Inductor's code for several tile configurations, then the training step with the best
  # of them (SPRINTC_QK_BLOCKS) against the code as shipped, alternating on the card, and the sampling step of each
  gpu_info
  versions
  piece pytest_cuda 150 0 python3 -m pytest -q -x "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" -p no:cacheprovider --rootdir "$REPO"
  if [ $TINY = 0 ]; then
    qk_micro 2,8,1,4,6
  fi
  for r in on_1 off_1 on_2 off_2; do
    kern=$([ "${r%_*}" = on ] && echo --kernels || echo --no-kernels)
    parts=$([ "${r#*_}" = 2 ] && echo train,sample || echo train)
    piece "qk_$r" 110 0 $BENCH --batch 128 --modes $TMODES --parts $parts $kern --json "$W/qk_$r.json"
  done
elif [ "$PHASE" = qk2 ]; then  # session I, one GPU, after qk: the CUDA tests; the sampling step with the kernels
  # (target.kernels, now on by default for steps without gradients) against --no-kernels, alternating; then the
  # training step with the kernels forced on (SPRINTC_QK_KERNELS=always, q and k now written head-major) against off
  gpu_info
  versions
  piece pytest_cuda 150 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" -k "qk or kernel" -p no:cacheprovider --rootdir "$REPO"
  for r in on_1 off_1 on_2 off_2; do
    piece "qks_$r" 80 0 $BENCH --batch 128 --modes $TMODES --parts sample $([ "${r%_*}" = on ] && echo --kernels || echo --no-kernels) --json "$W/qks_$r.json"
  done
  piece qkt_always 100 0 env SPRINTC_QK_KERNELS=always $BENCH --batch 128 --modes $TMODES --parts train --json "$W/qkt_always.json"
  piece qkt_off $(( 560 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $TMODES --parts train --no-kernels --json "$W/qkt_off.json"
elif [ "$PHASE" = qk3 ]; then  # session J, one GPU: the q/k kernels rewritten (q and k in separate programs, v copied by
  # torch, dq / dk strides constant): their CUDA tests, alone against Inductor's code, then the training step with them
  # forced on (SPRINTC_QK_KERNELS=always) against --no-kernels, alternating; the second pair also samples
  gpu_info
  versions
  piece pytest_cuda 150 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" -k "qk or kernel" -p no:cacheprovider --rootdir "$REPO"
  [ $TINY = 0 ] && qk_micro 2,8,1,4,6
  for r in on_1 off_1 on_2 off_2; do
    parts=$([ "${r#*_}" = 2 ] && echo train,sample || echo train)
    if [ "${r%_*}" = on ]; then
      piece "qk3_$r" 110 0 env SPRINTC_QK_KERNELS=always $BENCH --batch 128 --modes $TMODES --parts $parts --kernels --json "$W/qk3_$r.json"
    else
      piece "qk3_$r" 110 0 $BENCH --batch 128 --modes $TMODES --parts $parts --no-kernels --json "$W/qk3_$r.json"
    fi
  done
elif [ "$PHASE" = j1 ]; then  # session J, one H100 (kind nvidia-h100-x1), the q/k kernels now in training too: their
  # CUDA tests, the anchor at 128, sprintc at 128 (training and sampling) with the kernels (as shipped) and without,
  # then `sprintc train` on XL latents at 128 as shipped
  gpu_info
  versions
  piece pytest_cuda 120 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" -p no:cacheprovider --rootdir "$REPO"
  [ $TINY = 0 ] && piece anchor_b128 220 0 $(anchor 128)
  piece sit_b128 100 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --json "$W/sit_b128.json"
  piece sit_b128_nok 80 0 $BENCH --batch 128 --modes $TMODES --parts train --no-kernels --json "$W/sit_b128_nok.json"
  train_setup 128
  train_each $(( 590 - ($(date +%s) - T0) )) shipped:xl_ddp
  rm -rf "$W/latents"
elif [ "$PHASE" = j2 ]; then  # session J, one H100, after j1: the anchor at 64 and 32, then sprintc at 64 and 32 as shipped
  gpu_info
  [ $TINY = 0 ] && piece anchor_b64 200 0 $(anchor 64)
  [ $TINY = 0 ] && piece anchor_b32 200 0 $(anchor 32)
  piece sit_b64_32 $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 64,32 --modes $TMODES --parts train --json "$W/sit_b64_32.json"
elif [ "$PHASE" = j3 ]; then  # session J, one H100, after qk3's third run: the kernels as shipped now (forward 64 + 8
  # columns with v, backward padded): CUDA tests, the kernels alone (for information: the benches run the defaults),
  # the anchor at 128, sprintc at 128 with and without the kernels (training and sampling)
  gpu_info
  versions
  piece pytest_cuda 120 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" -p no:cacheprovider --rootdir "$REPO"
  [ $TINY = 0 ] && qk_micro 4,8,1,4,6 && unset SPRINTC_QK_BLOCKS
  [ $TINY = 0 ] && piece anchor_b128 220 0 $(anchor 128)
  piece sit_b128 100 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --json "$W/sit_b128.json"
  piece sit_b128_nok $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --no-kernels --json "$W/sit_b128_nok.json"
elif [ "$PHASE" = jprof ]; then  # session J, one H100, the last call: a profile of `sprintc train`'s routed steps at 128 as
  # shipped (the q/k kernels in training), then the 250-step sampling of 64 images with the kernels and without
  gpu_info
  versions
  train_setup 128 45
  piece trainprof_shipped 200 0 python3 "$REPO/scripts/gpu_train_profile.py" "$W/xl_ddp.yaml" "$W/run_prof" "$W/trainprof_shipped.txt"
  [ -f "$W/run_prof/metrics.jsonl" ] && cp "$W/run_prof/metrics.jsonl" "$W/trainprof_shipped_metrics.jsonl"
  rm -rf "$W/run_prof" "$W/latents"
  piece sample250 150 0 $BENCH --batch 64 --parts sample250,sample250g --images 64 --sample-steps $([ $TINY = 1 ] && echo 3 || echo 250) --json "$W/sample250.json"
  piece sample250_nok $(( 560 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --parts sample250,sample250g --images 64 --sample-steps $([ $TINY = 1 ] && echo 3 || echo 250) --no-kernels --json "$W/sample250_nok.json"
elif [ "$PHASE" = jfold ]; then  # session J, one GPU: the backward kernel also copying v's gradient (this wheel) against
  # the wheel of BASE (v's gradient copied by torch; `BASE=REV scripts/gpu_prepare.sh`): CUDA tests, the kernels alone,
  # then the training step at 128 alternating base, new, base, new on the card (both with their default tiles)
  gpu_info
  versions
  base_wheel
  if [ "${JFOLD_AB_ONLY:-0}" = 0 ]; then
    piece pytest_cuda 120 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" -k "qk or kernel" -p no:cacheprovider --rootdir "$REPO"
    [ $TINY = 0 ] && qk_micro 4,4,1,4,5 && unset SPRINTC_QK_BLOCKS
  fi
  # one Inductor cache per wheel: the first run of this phase (session J, call 9) read the base's compiled graphs back
  # in the new wheel's runs (AOTAutograd's cache keyed the custom op by name; fixed by targets.inductor.KernelsInCacheKey)
  for r in base_1 new_1 base_2 new_2; do ab_bench "${r%_*}" "fold_$r" 100 --batch 128 --modes $TMODES --parts train --json "$W/fold_$r.json"; done
elif [ "$PHASE" = k1 ]; then  # session K, one H100: the CUDA tests at HEAD (its kernels had not run on a GPU), the v-grad
  # fold A/B against BASE (as jfold, one Inductor cache per wheel), HEAD with target.multi_kernel (train and sampling),
  # then the anchor at 128 with the time left
  gpu_info
  versions
  base_wheel
  piece pytest_cuda 120 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" -p no:cacheprovider --rootdir "$REPO"
  for r in base_1 new_1 base_2 new_2; do ab_bench "${r%_*}" "fold_$r" 100 --batch 128 --modes $TMODES --parts train --json "$W/fold_$r.json"; done
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_new piece mk_b128 120 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --multi-kernel --json "$W/mk_b128.json"
  [ $TINY = 0 ] && piece anchor_b128 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = k2 ]; then  # session K, one H100: why the register test's ptxas failed on the device (call 1), profiles of
  # the sampling steps at 128 (where PDG loses against its FLOP ratio), the step at 128 twice with the warmed-up matmul
  # peak, then `sprintc train` at 128 on XL latents as shipped (HEAD had not run it)
  gpu_info
  versions
  piece ptxas 90 0 bash -c "env | grep -i ptxas; python3 $REPO/scripts/kernel_registers.py; python3 -m pytest -q $REPO/tests/test_kernels.py -k hopper -p no:cacheprovider --rootdir $REPO"
  piece sample_prof 150 0 $BENCH --batch 128 --modes compiled,cudagraph --parts sample --profile "$W/prof" --json "$W/sample_prof.json"
  for r in 1 2; do piece step_b128_$r 90 0 $BENCH --batch 128 --modes $TMODES --parts train --json "$W/step_b128_$r.json"; done
  train_setup 128
  train_each $(( 585 - ($(date +%s) - T0) )) shipped:xl_ddp
  rm -rf "$W/latents"
elif [ "$PHASE" = k3 ]; then  # session K, one H100: the step at 128 compiled as one graph (target.regional: false, the glue
  # between blocks fused and each block's last residual add fused into the next block's norm) against the regional
  # default, then the anchor with the time left
  gpu_info
  versions
  bench_variant whole 'target: {regional: false}'
  piece step_b128 100 0 $BENCH --batch 128 --modes $TMODES --parts train --json "$W/step_b128.json"
  piece whole_b128 300 0 python3 -m sprintc bench "$W/whole.yaml" $DEV --batch 128 --modes $TMODES --parts train --json "$W/whole_b128.json"
  [ $TINY = 0 ] && piece anchor_b128 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = k4 ]; then  # session K, one H100: Inductor's mix-order reductions off (target.mix_order_reduction, this
  # wheel) against on (the wheel of BASE, torch's default): the CUDA tests, the scale-shift-table gradients with the
  # switch on and off, the step at 128 alternating base, new, and the whole-model routed step that call 3 saw crash
  gpu_info
  versions
  base_wheel
  piece pytest_cuda 150 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -p no:cacheprovider --rootdir "$REPO"
  piece mix_demo 90 0 python3 "$REPO/scripts/gpu_mix_order.py"
  bench_variant whole 'target: {regional: false}'
  ab() { ab_bench "${1%_*}" "mix_$1" 100 --batch 128 --modes $TMODES --parts train --json "$W/mix_$1.json"; }
  ab base_1; ab new_1
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_new piece whole_routed 170 0 python3 -m sprintc bench "$W/whole.yaml" $DEV --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/whole_routed.json"
  ab base_2; ab new_2
elif [ "$PHASE" = k5 ]; then  # session K, one H100: the step at 128 as shipped (mix-order reductions off),
  # the anchor, then the routed step compiled as one graph (target.regional: false), alone and with target.multi_kernel
  gpu_info
  versions
  bench_variant whole 'target: {regional: false}'
  bench_variant whole_mk 'target: {regional: false, multi_kernel: true}'
  piece step_b128 100 0 $BENCH --batch 128 --modes $TMODES --parts train --json "$W/step_b128.json"
  [ $TINY = 0 ] && piece anchor_b128 210 0 $(anchor 128)
  for v in whole whole_mk; do
    piece ${v}_routed $(( 590 - ($(date +%s) - T0) )) 0 python3 -m sprintc bench "$W/$v.yaml" $DEV --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/${v}_routed.json"
  done
elif [ "$PHASE" = k6 ]; then  # session K, one H100: the sampling step at 128 compiled as one graph against the regional
  # default (PDG/CFG), then `sprintc train` on XL latents with target.regional false and target.multi_kernel
  gpu_info
  versions
  bench_variant whole 'target: {regional: false}'
  piece sample_b128 100 0 $BENCH --batch 128 --modes $TMODES --parts sample --json "$W/sample_b128.json"
  piece whole_sample_b128 200 0 python3 -m sprintc bench "$W/whole.yaml" $DEV --batch 128 --modes $TMODES --parts sample --json "$W/whole_sample_b128.json"
  train_setup 128
  variant xl_whole_mk 'target: {regional: false, multi_kernel: true}'
  train_each $(( 585 - ($(date +%s) - T0) )) whole_mk:xl_whole_mk
  rm -rf "$W/latents"
elif [ "$PHASE" = l1 ]; then  # session L, one H100: short_attention alone against SDPA (warps), the CUDA tests, then the
  # step at 128 with it (this wheel) against the wheel of BASE (without it), alternating, one Inductor cache per wheel;
  # batch 64 and 32 with it
  gpu_info
  versions
  [ $TINY = 0 ] && piece short_attn 120 0 python3 "$REPO/scripts/gpu_short_attention.py" "$W/short_attention.json"
  piece pytest_cuda 150 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" -p no:cacheprovider --rootdir "$REPO"
  base_wheel
  ab_bench base l_base_1 100 --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/l_base_1.json"
  ab_bench new l_new_1 130 --batch 128 --modes $TMODES --parts train --json "$W/l_new_1.json"
  ab_bench base l_base_2 100 --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/l_base_2.json"
  ab_bench new l_new_2 100 --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/l_new_2.json"
  ab_bench new l_new_b64_32 $(( 590 - ($(date +%s) - T0) )) --batch 64,32 --modes $TMODES --parts train --graphs routed --json "$W/l_new_b64_32.json"
elif [ "$PHASE" = l4 ]; then  # session L, one H100: the CUDA tests; the step at 128 as committed (short_attention in the
  # routed blocks) and with every attention in SDPA, alternating, one Inductor cache each; the dense step; the anchor;
  # batch 64 and 32; the routed step compiled as one graph with multi-kernel reductions
  gpu_info
  versions
  piece pytest_cuda 150 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" -p no:cacheprovider --rootdir "$REPO"
  arm() {  # arm NAME SETTING RUN [GRAPHS]
    SPRINTC_SHORT_ATTENTION=$2 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_$1 piece "l4_$1_$3" 100 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs ${4:-routed} --json "$W/l4_$1_$3.json"
  }
  arm sdpa 0,4,4 1; arm committed 64,4,4 1 routed,dense; arm sdpa 0,4,4 2; arm committed 64,4,4 2
  [ $TINY = 0 ] && piece anchor_b128 150 0 $(anchor 128)
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_committed piece l4_b64_32 100 0 $BENCH --batch 64,32 --modes $TMODES --parts train --graphs routed --json "$W/l4_b64_32.json"
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_whole piece l4_whole_mk $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --no-regional --multi-kernel --json "$W/l4_whole_mk.json"
elif [ "$PHASE" = l5 ]; then  # session L, one H100: `sprintc train` on XL latents at 128 as shipped (short_attention in
  # the routed blocks; its losses against session K's), then the routed step at 64 compiled as one graph with
  # multi-kernel reductions
  gpu_info
  versions
  train_setup 128
  train_each 330 shipped:xl_ddp
  rm -rf "$W/latents"
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_whole piece l5_whole_mk_b64 $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --no-regional --multi-kernel --json "$W/l5_whole_mk_b64.json"
elif [ "$PHASE" = l6 ]; then  # session L, one H100: the anchor at 64 and the routed step at 64 as shipped (same call), then
  # the whole model with multi-kernel reductions at 128, routed and dense (routed / dense of that configuration)
  gpu_info
  versions
  [ $TINY = 0 ] && piece anchor_b64 150 0 $(anchor 64)
  piece l6_b64 100 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/l6_b64.json"
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_whole piece l6_whole_mk $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $TMODES --parts train --no-regional --multi-kernel --json "$W/l6_whole_mk.json"
elif [ "$PHASE" = l7 ]; then  # session L, one H100: short_attention alone as shipped (warps), the kernels' CUDA tests
  gpu_info
  versions
  [ $TINY = 0 ] && piece short_attn 120 0 python3 "$REPO/scripts/gpu_short_attention.py" "$W/short_attention.json"
  piece pytest_cuda 200 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" -k "short or kernel" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = m1 ]; then  # session M, one H100: the CUDA tests of MasterAdamW; the step at 128 with train.master_weights
  # (as committed) and without, alternating, one Inductor cache each; the dense step of each
  gpu_info
  versions
  piece pytest_cuda 200 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "master or cuda_graph_training or short_attention" -p no:cacheprovider --rootdir "$REPO"
  arm() {  # arm NAME FLAG RUN [GRAPHS]
    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_$1 piece "m1_$1_$3" 110 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs ${4:-routed} $2 --json "$W/m1_$1_$3.json"
  }
  arm plain --no-master-weights 1 routed,dense; arm master --master-weights 1 routed,dense
  arm plain --no-master-weights 2; arm master --master-weights 2
  [ $TINY = 0 ] && piece anchor_b128 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = m2 ]; then  # session M, one H100: `sprintc train` on XL latents at 128 as shipped (master weights); the
  # routed step at 128 of the whole model with multi-kernel reductions; batch 64 and 32
  gpu_info
  versions
  train_setup 128
  train_each 300 shipped:xl_ddp
  rm -rf "$W/latents"
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_whole piece m2_whole_mk 170 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --no-regional --multi-kernel --json "$W/m2_whole_mk.json"
  piece m2_b64_32 $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 64,32 --modes $TMODES --parts train --graphs routed --json "$W/m2_b64_32.json"
elif [ "$PHASE" = m3 ]; then  # session M, one H100: a profile of the routed step at 128 with master weights; the anchor at 64
  gpu_info
  versions
  piece m3_prof 150 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --profile "$W/prof" --json "$W/m3_prof.json"
  [ $TINY = 0 ] && piece anchor_b64 $(( 420 - ($(date +%s) - T0) )) 0 $(anchor 64)
elif [ "$PHASE" = m4 ]; then  # session M, one H100: the CUDA tests of MasterAdamW (EMA in its kernel, resume); `sprintc train`
  # on XL latents at 128 with the EMA in the optimizer's kernel against the wheel of BASE (the EMA updated apart), alternating
  gpu_info
  versions
  piece pytest_cuda 150 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "master or cuda_graph_training" -p no:cacheprovider --rootdir "$REPO"
  ab_train 150
elif [ "$PHASE" = m5 ]; then  # session M, one H100: the CUDA tests at the last commit; MasterAdamW's kernel alone (blocks,
  # warps); the step at 128 as shipped, routed and dense; the anchor
  gpu_info
  versions
  piece pytest_cuda 240 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" "$REPO/tests/test_optim.py" -p no:cacheprovider --rootdir "$REPO"
  [ $TINY = 0 ] && piece adamw_micro 90 0 python3 "$REPO/scripts/gpu_adamw.py" "$W/adamw_micro.json"
  piece m5_b128 130 0 $BENCH --batch 128 --modes $TMODES --parts train --json "$W/m5_b128.json"
  [ $TINY = 0 ] && piece anchor_b128 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = m6 ]; then  # session M, one H100: the CUDA tests of MasterAdamW; the step at 128 with a launch per large
  # weight in the captured step (this wheel) against the gathered gradients (the wheel of BASE), alternating, routed and dense
  gpu_info
  versions
  piece pytest_cuda 150 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "master or cuda_graph_training" -p no:cacheprovider --rootdir "$REPO"
  base_wheel
  for r in 1 2; do
    ab_bench base "m6_base_$r" 110 --batch 128 --modes $TMODES --parts train $([ $r = 2 ] && echo --graphs routed) --json "$W/m6_base_$r.json"
    ab_bench new "m6_new_$r" 110 --batch 128 --modes $TMODES --parts train $([ $r = 2 ] && echo --graphs routed) --json "$W/m6_new_$r.json"
  done
elif [ "$PHASE" = m7 ]; then  # session M, one H100: the CUDA, kernel and optimizer tests at the last commit
  gpu_info
  versions
  piece pytest_cuda 300 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" "$REPO/tests/test_optim.py" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = n1 ]; then  # session N, one H100: the CUDA tests of MasterAdamW (gradients read in place); its kernels
  # alone; the step at 128, 64 and 32 against the wheel of BASE (gathered gradients), alternating, one Inductor cache
  # each; the anchor at 128
  gpu_info
  versions
  piece pytest_cuda 200 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_optim.py" -k "master or cuda_graph_training or adamw" -p no:cacheprovider --rootdir "$REPO"
  [ $TINY = 0 ] && piece adamw_micro 90 0 python3 "$REPO/scripts/gpu_adamw.py" "$W/adamw_micro.json"
  base_wheel
  for r in 1 2; do
    ab_bench base "n1_base_$r" 100 --batch 128 --modes $TMODES --parts train $([ $r = 2 ] && echo --graphs routed) --json "$W/n1_base_$r.json"
    ab_bench new "n1_new_$r" 100 --batch 128 --modes $TMODES --parts train $([ $r = 2 ] && echo --graphs routed) --json "$W/n1_new_$r.json"
  done
  ab_bench base n1_base_64_32 90 --batch 64,32 --modes $TMODES --parts train --graphs routed --json "$W/n1_base_64_32.json"
  ab_bench new n1_new_64_32 90 --batch 64,32 --modes $TMODES --parts train --graphs routed --json "$W/n1_new_64_32.json"
  [ $TINY = 0 ] && piece anchor_b128 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = n2 ]; then  # session N, one H100: the CUDA, kernel and optimizer tests; `sprintc train` on XL latents at
  # 128; the sampling step (CFG, PDG) at 128; the anchor at 64
  gpu_info
  versions
  piece pytest_cuda 240 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" "$REPO/tests/test_optim.py" -p no:cacheprovider --rootdir "$REPO"
  train_setup 128
  train_each 150 shipped:xl_ddp
  rm -rf "$W/latents"
  piece n2_sample 90 0 $BENCH --batch 128 --modes $TMODES --parts sample --json "$W/n2_sample.json"
  [ $TINY = 0 ] && piece anchor_b64 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 64)
elif [ "$PHASE" = n3 ]; then  # session N, one H100: a profile of the routed step at 128 (gradients read in place); the
  # whole model with multi-kernel reductions at 128; the anchor at 128
  gpu_info
  versions
  piece n3_prof 150 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --profile "$W/prof" --json "$W/n3_prof.json"
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_whole piece n3_whole_mk 170 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --no-regional --multi-kernel --json "$W/n3_whole_mk.json"
  [ $TINY = 0 ] && piece anchor_b128 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = n4 ]; then  # session N, one H100: the CUDA, kernel and optimizer tests at the last commit; the step at
  # 128, routed and dense
  gpu_info
  versions
  piece pytest_cuda 240 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" "$REPO/tests/test_optim.py" -p no:cacheprovider --rootdir "$REPO"
  piece n4_b128 120 0 $BENCH --batch 128 --modes $TMODES --parts train --json "$W/n4_b128.json"
elif [ "$PHASE" = n5 ]; then  # session N, one H100: the routed step at 64 and the anchor at 64 in one call
  gpu_info
  versions
  piece n5_b64 100 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/n5_b64.json"
  [ $TINY = 0 ] && piece anchor_b64 $(( 400 - ($(date +%s) - T0) )) 0 $(anchor 64)
elif [ "$PHASE" = o1 ]; then  # session O, one H100: the CUDA tests of qkv_attention (the routed blocks' norm + RoPE +
  # attention from the qkv projection); the kernel alone against the separate kernels at its layouts and warps; the step
  # at 128 with the fastest arm against SPRINTC_QKV_ATTENTION=0 (the separate kernels: session N's code), alternating, one
  # Inductor cache each; then 64 and 32
  gpu_info
  versions
  piece pytest_cuda 200 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "qkv_attention or qk_kernels_equals_eager or cuda_graph_training" -p no:cacheprovider --rootdir "$REPO"
  [ $TINY = 0 ] && piece qkv_micro 120 0 python3 "$REPO/scripts/gpu_qkv_attention.py" "$W/qkv_micro.json"
  best=$(python3 -c "
import json
rows = [r for r in json.load(open('$W/qkv_micro.json')) if r['arm'] != 'separate' and r['fwd_bwd_ms']]
r = min(rows, key=lambda r: r['fwd_bwd_ms'])['arm']  # 'split S, warps F,B'
print('1,' + r.split(',')[0].split()[1] + ',' + r.split('warps ')[1])" 2>/dev/null || echo 1,1,4,4)
  echo "qkv_attention for the A/B: $best" | tee "$W/qkv_best.txt"
  for r in 1 2; do
    SPRINTC_QKV_ATTENTION=0,1,4,4 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_off piece "o1_off_$r" 100 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/o1_off_$r.json"
    SPRINTC_QKV_ATTENTION=$best TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_on piece "o1_on_$r" 100 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/o1_on_$r.json"
  done
  SPRINTC_QKV_ATTENTION=0,1,4,4 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_off piece o1_off_64_32 90 0 $BENCH --batch 64,32 --modes $TMODES --parts train --graphs routed --json "$W/o1_off_64_32.json"
  SPRINTC_QKV_ATTENTION=$best TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_on piece o1_on_64_32 90 0 $BENCH --batch 64,32 --modes $TMODES --parts train --graphs routed --json "$W/o1_on_64_32.json"
elif [ "$PHASE" = o2 ]; then  # session O, one H100: qkv_attention's illegal address of o1, found by arm, norm and RoPE (each
  # in its own process, synchronised after the forward and after the backward); then the arms alone, timed
  gpu_info
  versions
  piece pytest_compiled 120 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "qk_kernels_equals_eager" -p no:cacheprovider --rootdir "$REPO"
  piece qkv_check 200 0 env CUDA_LAUNCH_BLOCKING=1 python3 "$REPO/scripts/gpu_qkv_attention.py" --batch 32 --check "$W/qkv_check.json"
  [ $TINY = 0 ] && piece qkv_micro 200 0 python3 "$REPO/scripts/gpu_qkv_attention.py" "$W/qkv_micro.json"
elif [ "$PHASE" = o3 ]; then  # session O, one H100: profiles of the routed step at 128 compiled by block (as shipped) and as
  # one graph (where the whole-model step's 3-4 ms come from); the anchor at 128
  gpu_info
  versions
  piece o3_regional 150 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --profile "$W/prof" --tag regional_ --json "$W/o3_regional.json"
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_whole piece o3_whole 200 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --no-regional --profile "$W/prof" --tag whole_ --json "$W/o3_whole.json"
  [ $TINY = 0 ] && piece anchor_b128 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = p1 ]; then  # session P, one H100: the MLP's GELU in cuBLASLt's epilogue in sampling (SPRINTC_GELU_EPILOGUE
  # 1, as shipped from this session, against 0): its CUDA test, the sampling step at 128 alternating on the card (one
  # Inductor cache per arm), a profile of each, then the 250-step sampling of 64 images as shipped
  gpu_info
  versions
  piece pytest_gelu 150 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "gelu_epilogue or qk_kernels_equals_eager" -p no:cacheprovider --rootdir "$REPO"
  for r in 1 0 1 0; do
    n=$(( ${n:-0} + 1 ))
    prof=$([ $n -gt 2 ] && echo "--profile $W/prof --tag g${r}_")
    SPRINTC_GELU_EPILOGUE=$r TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_g$r piece "p1_sample_${r}_$n" 150 0 $BENCH --batch 128 --modes $TMODES --parts sample $prof --json "$W/p1_sample_${r}_$n.json"
  done
  SPRINTC_GELU_EPILOGUE=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_g1 piece p1_sample250 $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --parts sample250,sample250g --images 64 --sample-steps $([ $TINY = 1 ] && echo 3 || echo 250) --json "$W/p1_sample250.json"
elif [ "$PHASE" = p2 ]; then  # session P, one H100: row reductions up to 2048 wide made persistent (SPRINTC_PERSISTENT_ROWS
  # 2048, as shipped from this session, against 0 = Inductor's limit of 1024): its CUDA test, then the training step
  # (routed and dense) and the sampling step at 128, arms alternating on the card, one Inductor cache each
  gpu_info
  versions
  python3 -c "import torch._inductor.config as c; print('inductor_choices_class' in dir(c))" | tee "$W/choices_config.txt"
  piece pytest_rows 120 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "persistent" -p no:cacheprovider --rootdir "$REPO"
  for r in 2048 0 2048 0; do
    n=$(( ${n:-0} + 1 ))
    SPRINTC_PERSISTENT_ROWS=$r TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_r$r piece "p2_${r}_$n" 150 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --json "$W/p2_${r}_$n.json"
  done
elif [ "$PHASE" = p3 ]; then  # session P, one H100: the CUDA, kernel and optimizer tests as shipped; the step at 128 / 64 / 32
  # and the sampling step; the anchor at 128
  gpu_info
  versions
  piece pytest_cuda 330 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" "$REPO/tests/test_optim.py" -p no:cacheprovider --rootdir "$REPO"
  piece p3_step 200 0 $BENCH --batch 128,64,32 --modes $TMODES --parts train --graphs routed --json "$W/p3_step.json"
  piece p3_again 100 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/p3_again.json"  # the FX cache's hits
  [ $TINY = 0 ] && piece anchor_b128 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = p4 ]; then  # session P, one H100: persistent row reductions again, now by a patch of Inductor's own
  # heuristic (widen_persistent_rows): its CUDA test, then the training step (routed and dense) and the sampling step at
  # 128, SPRINTC_PERSISTENT_ROWS 2048 (as shipped) against 0, alternating, one Inductor cache each
  gpu_info
  versions
  piece pytest_rows 150 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "persistent or gelu" -p no:cacheprovider --rootdir "$REPO"
  for r in 2048 0 2048 0; do
    n=$(( ${n:-0} + 1 ))
    SPRINTC_PERSISTENT_ROWS=$r TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_r$r piece "p4_${r}_$n" 150 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --json "$W/p4_${r}_$n.json"
  done
elif [ "$PHASE" = p5 ]; then  # session P, one H100: the CUDA, kernel and optimizer tests as shipped; the step at 64 / 32
  gpu_info
  versions
  piece pytest_cuda 330 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" "$REPO/tests/test_optim.py" -p no:cacheprovider --rootdir "$REPO"
  piece p5_step 200 0 $BENCH --batch 64,32 --modes $TMODES --parts train --graphs routed --json "$W/p5_step.json"
elif [ "$PHASE" = q1 ]; then  # session Q, one H100: how much of the optimizer could hide behind the next forward
  # (scripts/gpu_overlap_probe.py: shipped / no optimizer / optimizer on a second stream beside the forward), the anchor
  gpu_info
  versions
  if [ $TINY = 0 ]; then
    piece overlap_probe 300 0 python3 "$REPO/scripts/gpu_overlap_probe.py" "$SPEC" --batch 128,64 --json "$W/overlap_probe.json"
    piece anchor_b128 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 128)
  fi
elif [ "$PHASE" = q2 ]; then  # session Q, one H100: where `sprintc train`'s step goes beyond the bench's captured step
  # (scripts/gpu_train_profile.py: wall vs GPU busy time per routed step, kernels by name), as shipped and with the EMA
  # updated only at the end (train.ema.every 1000000), the EMA's share
  gpu_info
  versions
  train_setup 128 45  # the profile's schedule waits 35 steps, warms up 3 and records 5
  variant noema 'train: {ema: {every: 1000000}}'
  for r in shipped:xl_ddp noema:noema; do
    name=${r%%:*}
    piece "trainprof_$name" 200 0 python3 "$REPO/scripts/gpu_train_profile.py" "$W/${r#*:}.yaml" "$W/run_prof_$name" "$W/trainprof_$name.txt"
    [ -f "$W/run_prof_$name/metrics.jsonl" ] && cp "$W/run_prof_$name/metrics.jsonl" "$W/trainprof_${name}_metrics.jsonl"
    rm -rf "$W/run_prof_$name"
  done
elif [ "$PHASE" = q3 ]; then  # session Q, one H100: idle time between kernels in the bench's captured step and in
  # `sprintc train`'s loop without the per-step EMA (scripts/gpu_step_gaps.py, scripts/gpu_train_profile.py)
  gpu_info
  versions
  [ $TINY = 0 ] && piece step_gaps 200 0 python3 "$REPO/scripts/gpu_step_gaps.py" "$SPEC" "$W/step_gaps.txt"
  train_setup 128 45
  variant noema 'train: {ema: {every: 1000000}}'
  piece trainprof_noema 200 0 python3 "$REPO/scripts/gpu_train_profile.py" "$W/noema.yaml" "$W/run_prof_noema" "$W/trainprof_noema.txt"
  rm -rf "$W/run_prof_noema" "$W/latents"
elif [ "$PHASE" = q4 ]; then  # session Q, one H100: the loop reads a step's loss without waiting for the next step
  # (sprintc.train.read_later): its CUDA tests, `sprintc train` on XL latents against BASE (1e19d72), then the loop's
  # idle time between kernels again (without the per-step EMA)
  gpu_info
  versions
  piece pytest_cuda 150 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "read_without or training_equals_plain or without_a_host_sync" -p no:cacheprovider --rootdir "$REPO"
  ab_train 170
  left=$(( 590 - ($(date +%s) - T0) ))
  if [ $left -gt 100 ]; then
    variant noema 'train: {ema: {every: 1000000}}'
    piece trainprof_noema $left 0 python3 "$REPO/scripts/gpu_train_profile.py" "$W/noema.yaml" "$W/run_prof_noema" "$W/trainprof_noema.txt"
    rm -rf "$W/run_prof_noema"
  fi
elif [ "$PHASE" = r1 ]; then  # session R, one H100: the MLP's training step with cuBLASLt's GELU epilogues
  gpu_info
  versions
  [ $TINY = 0 ] && piece gelu_mlp 150 0 python3 "$REPO/scripts/gpu_gelu_mlp.py" --json "$W/gelu_mlp.json"
  for r in 1 sample 1 sample; do
    n=$(( ${n:-0} + 1 ))
    SPRINTC_GELU_EPILOGUE=$r TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_g$r piece "r1_${r}_$n" 120 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs $([ $n -le 2 ] && echo routed,dense || echo routed) --json "$W/r1_${r}_$n.json"
  done
  piece pytest_gelu $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "gelu or qk_kernels_equals_eager" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = r2 ]; then  # session R, one H100: cuBLASLt's candidate algorithms for the GELU epilogues, the fastest kept
  gpu_info
  versions
  if [ $TINY = 0 ]; then
    piece gelu_algos 150 0 python3 "$REPO/scripts/gpu_gelu_algos.py" --json "$W/gelu_algos.json"
    piece gelu_mlp 100 0 python3 "$REPO/scripts/gpu_gelu_mlp.py" --json "$W/gelu_mlp.json"
  fi
  for r in 1 sample 1 sample; do
    n=$(( ${n:-0} + 1 ))
    SPRINTC_GELU_EPILOGUE=$r TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_g$r piece "r2_${r}_$n" 100 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/r2_${r}_$n.json"
  done
  piece pytest_gelu $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "gelu" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = r3 ]; then  # session R, one H100: the forward's epilogue alone, and with the backward's DGELU
  gpu_info
  versions
  if [ $TINY = 0 ]; then
    piece gelu_algos 100 0 python3 "$REPO/scripts/gpu_gelu_algos.py" --json "$W/gelu_algos.json"
    piece gelu_mlp 100 0 python3 "$REPO/scripts/gpu_gelu_mlp.py" --json "$W/gelu_mlp.json"
  fi
  for r in sample fwd dgelu sample fwd dgelu; do
    n=$(( ${n:-0} + 1 ))
    SPRINTC_GELU_EPILOGUE=$r TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_g$r piece "r3_${r}_$n" 90 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/r3_${r}_$n.json"
  done
  piece pytest_gelu $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "gelu" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = r4 ]; then  # session R, one H100: the targets with the MLP's epilogues in training, as shipped
  gpu_info
  versions
  piece r4_b128 130 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --json "$W/r4_b128.json"
  train_setup 128
  train_each 150 shipped:xl_ddp
  [ $TINY = 0 ] && piece anchor_b128 120 0 $(anchor 128)
  piece r4_b64_32 80 0 $BENCH --batch 64,32 --modes $TMODES --parts train --graphs routed --json "$W/r4_b64_32.json"
  piece pytest_gelu $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" -k "gelu or qk_kernels_equals_eager" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = r5 ]; then  # session R, one H100: the routed step at 128 as shipped beside the anchor; the CUDA tests
  gpu_info
  versions
  piece r5_b128 100 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/r5_b128.json"
  [ $TINY = 0 ] && piece anchor_b128 260 0 $(anchor 128)
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -q -o addopts="" "$REPO/tests/test_cuda.py" -k "gelu or qk_kernels_equals_eager or cuda_graph_training" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = r6 ]; then  # session R, one H100: the MLP's CUDA tests as shipped
  gpu_info
  versions
  piece pytest_gelu 300 0 python3 -m pytest -q -o addopts="" "$REPO/tests/test_cuda.py" -k "gelu" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = r7 ]; then  # session R, two GPUs: the DDP CUDA tests with the MLP's epilogues on each rank
  gpu_info
  versions
  piece pytest_ddp 170 0,1 python3 -m pytest -q -o addopts="" "$REPO/tests/test_cuda.py" -k "ddp and bfloat16" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = s1 ]; then  # session S, one H100: the bias gradients in cuBLASLt's BGRADB epilogue (SPRINTC_BIAS_GRAD
  # fc1 / mlp) and Inductor's programmatic dependent launch (TORCHINDUCTOR_ENABLE_PDL=1), each against the code as shipped;
  # ran on the wheel of 3edf997 (matmul_bgradb, SPRINTC_BIAS_GRAD and the probe's --bgrad were removed after it: no gain)
  gpu_info
  versions
  python3 -c "import torch._inductor.config as c; print('inductor triton.enable_pdl:', getattr(c.triton, 'enable_pdl', 'missing'))" | tee "$W/pdl.txt"
  [ $TINY = 0 ] && piece bgrad_algos 100 0 python3 "$REPO/scripts/gpu_gelu_algos.py" --bgrad --json "$W/bgrad_algos.json"
  for r in 0 fc1 mlp pdl 0 fc1 mlp pdl; do
    n=$(( ${n:-0} + 1 ))
    SPRINTC_BIAS_GRAD=$([ $r = pdl ] && echo 0 || echo $r) TORCHINDUCTOR_ENABLE_PDL=$([ $r = pdl ] && echo 1 || echo 0) \
      TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_s$r piece "s1_${r}_$n" 100 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/s1_${r}_$n.json"
  done
  piece pytest_gelu $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -q -o addopts="" "$REPO/tests/test_cuda.py" -k "gelu" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = s2 ]; then  # session S, one H100: target.pdl (on, as committed) against --no-pdl, the routed training
  # step and the sampling steps at 128, alternating; `sprintc train` on XL latents at 128 with it (losses against session
  # R's); the compiled-against-eager CUDA tests with it
  gpu_info
  versions
  for r in on off on off; do
    n=$(( ${n:-0} + 1 ))
    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_pdl$r piece "s2_${r}_$n" 120 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --graphs routed $([ $r = off ] && echo --no-pdl) --json "$W/s2_${r}_$n.json"
  done
  train_setup 128
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_pdlon train_each 150 shipped:xl_ddp
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" -k "qk_kernels_equals_eager or cuda_graph_training or gelu_epilogue" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = s3 ]; then  # session S, one H100: the routed step at 128 and 64 as shipped (target.pdl on), then the
  # anchor at 128 and at 64 in the same call
  gpu_info
  versions
  piece s3_b128_64 120 0 $BENCH --batch 128,64 --modes $TMODES --parts train --graphs routed --json "$W/s3_b128_64.json"
  [ $TINY = 0 ] && piece anchor_b128 230 0 $(anchor 128)
  [ $TINY = 0 ] && piece anchor_b64 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 64)
elif [ "$PHASE" = s4 ]; then  # session S, two GPUs: every CUDA test file on the code as shipped (target.pdl on), the DDP
  # tests on both GPUs
  gpu_info
  versions
  piece pytest_cuda 570 0,1 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" \
    "$REPO/tests/test_optim.py" "$REPO/tests/test_cublaslt.py" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = s5 ]; then  # session S, two GPUs: `sprintc train` on XL latents, global batch 256, under DDP and then
  # FSDP2 (torchrun, 2 processes) with target.pdl on: the two runs' losses side by side
  gpu_info
  versions
  train_setup 256
  [ $TINY = 1 ] && export XL_BATCH=4
  train_ddp2 240 ddp:xl_ddp
  train_ddp2 $(( 580 - ($(date +%s) - T0) )) fsdp:xl_fsdp
elif [ "$PHASE" = t1 ]; then  # session T, one H100: the routed training step and the sampling steps at 128 with
  # FlashAttention-2 for the 256-token attention (cuDNN off when the graphs are traced, scripts/with_sdpa.py) against the
  # code as shipped (cuDNN), alternating, one Inductor cache each; the dense step too in the first pair. (At 8ccc0b7 the
  # phase first timed the backends alone with scripts/gpu_sdpa_backends.py, which failed in a CUDA-graph capture on the
  # H100 and was removed.)
  gpu_info
  versions
  for r in all flash all flash; do
    n=$(( ${n:-0} + 1 ))
    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_t$r piece "t1_${r}_$n" $([ $n -le 2 ] && echo 150 || echo 110) 0 python3 "$REPO/scripts/with_sdpa.py" $r bench $SPEC $DEV \
      --batch 128 --modes $TMODES --parts train,sample --graphs $([ $n -le 2 ] && echo routed,dense || echo routed) --json "$W/t1_${r}_$n.json"
  done
elif [ "$PHASE" = t2 ]; then  # session T, one H100: target.region_blocks 1 (as shipped), 2 and 4: the routed training step
  # and the sampling steps at 128, in turn, twice, one Inductor cache each (the first pass compiles cold)
  gpu_info
  versions
  for r in 1 2 4 1 2 4; do
    n=$(( ${n:-0} + 1 ))
    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_rb$r piece "t2_${r}_$n" $([ $n -le 3 ] && echo 130 || echo 80) 0 $BENCH --batch 128 \
      --modes $TMODES --parts train,sample --graphs routed --region-blocks $r --json "$W/t2_${r}_$n.json"
  done
elif [ "$PHASE" = t3 ]; then  # session T, one H100: the routing glue compiled with the fusion (as committed) against
  # SPRINTC_GLUE_REGIONS=0 (eager glue), region_blocks 2 both: the routed step and the sampling steps at 128, in turn,
  # twice, one Inductor cache each; then the compiled-against-eager CUDA tests
  gpu_info
  versions
  for r in 1 0 1 0; do
    n=$(( ${n:-0} + 1 ))
    SPRINTC_GLUE_REGIONS=$r TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_glue$r piece "t3_${r}_$n" $([ $n -le 2 ] && echo 130 || echo 80) 0 \
      $BENCH --batch 128 --modes $TMODES --parts train,sample --graphs routed --json "$W/t3_${r}_$n.json"
  done
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" -k "qk_kernels_equals_eager or cuda_graph_training or gelu_epilogue" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = t4 ]; then  # session T, one H100: the routed step at 128 as shipped (regions of 2 blocks, the glue with
  # the fusion), then the anchor at 128 in the same call; ends by ~360 s (what was left of the session's device time)
  gpu_info
  versions
  piece t4_b128 110 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/t4_b128.json"
  [ $TINY = 0 ] && piece anchor_b128 $(( 355 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = v3 ]; then  # session V, one H100: the code as shipped (session U's): `sprintc train` on XL latents at
  # 128 (the full-token stage after the routed one, regions of two blocks, the glue region, tuned matmuls in the captured
  # step); then the CUDA test files with the time left (-v: what passed before a timeout)
  gpu_info
  versions
  train_setup 128
  train_each 200 shipped:xl_ddp
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" --durations=20 "$REPO/tests/test_cuda.py" \
    "$REPO/tests/test_cublaslt.py" "$REPO/tests/test_kernels.py" "$REPO/tests/test_optim.py" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = v4 ]; then  # session V, one H100: target.tune (Inductor's coordinate-descent tuning of its kernels)
  # on the code as shipped: the routed step at 128 as shipped, then with --tune (cold: its compile time), then at 64
  # with --tune and as shipped with the time left; one Inductor cache per arm
  gpu_info
  versions
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_plain piece v4_b128 110 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/v4_b128.json"
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_tune piece v4_b128_tune 300 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --tune --json "$W/v4_b128_tune.json"
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_tune piece v4_b64_tune $(( 500 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --tune --json "$W/v4_b64_tune.json"
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_plain piece v4_b64 $(( 560 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/v4_b64.json"
elif [ "$PHASE" = w2 ]; then  # session W, one H100: the routed step as shipped (float32 softmax) profiled at 128 and 64,
  # the sources of Inductor's kernels it ran, then the anchor at 128 for a same-call ratio
  gpu_info
  versions
  export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_w2
  piece w2_b128 150 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --profile "$W/prof" --json "$W/w2_b128.json"
  piece w2_b64 120 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --profile "$W/prof" --json "$W/w2_b64.json"
  (cd /tmp/inductor_w2 && grep -rl --include='*.py' "triton.jit" . | tar czf "$W/inductor_kernels.tgz" -T -) 2>/dev/null
  [ $TINY = 0 ] && piece anchor_b128 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = w3 ]; then  # session W, one H100 (BASE=<the commit before> scripts/gpu_prepare.sh): the kernels'
  # outputs allocated by torch.empty (no copies of a merged empty_strided buffer) against BASE: the routed step at 128
  # and 64, base / new alternating, one Inductor cache per wheel; then the CUDA tests of the kernels
  ab_phase w3 "without_copies or short_attention or qk_kernels_equals_eager or cuda_graph_training"
elif [ "$PHASE" = w4 ]; then  # session W, one H100 (BASE=<the commit before> scripts/gpu_prepare.sh): the routed blocks'
  # attention as one op reading v from qkv and writing dv into dqkv (qkv_attention) against BASE (qk_norm_rope, then
  # short_attention, v and dv copied): the routed step at 128 and 64, alternating, one Inductor cache per wheel; the
  # CUDA tests of the kernels
  ab_phase w4 "qkv or without_copies or qk_kernels or short_attention or cuda_graph_training"
elif [ "$PHASE" = x2 ]; then  # session X, one H100: reductions with Inductor's DEFAULT hint looped in sprintc's compiles
  # (SPRINTC_LOOPED_SUMS=1, as committed) against Inductor's own choice (0, persistent at 64 tokens): the routed step at
  # 128 (profiled) then 64, alternating, one Inductor cache each; the CUDA tests of the heuristics and the compiled step
  gpu_info
  versions
  for b in 128 64; do
    for r in 0 1; do
      SPRINTC_LOOPED_SUMS=$r TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_sums$r piece "x2_${r}_b$b" $([ $b = 128 ] && echo 120 || echo 90) 0 \
        $BENCH --batch $b --modes $TMODES --parts train --graphs routed --profile "$W/prof" --tag "sums${r}_" --json "$W/x2_${r}_b$b.json"
    done
  done
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "loop or persistent or inductor_with_qk_kernels or cuda_graph_training or without_copies" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = y1 ]; then  # session Y, one H100: the q/k backward kernel with its loads pipelined (the sixth field of
  # SPRINTC_QK_BLOCKS, stages): the kernels alone over tiles and stages (scripts/gpu_qk_kernels.py); the routed step at 128
  # (profiled) and 64 with the fastest of them (24 routed q/k backwards + 4 dense forward + backward) against the shipped
  # tiles, one Inductor cache each; the CUDA tests of the kernels with the fastest
  gpu_info
  versions
  best=4,4,1,4,5,2
  if [ $TINY = 0 ]; then
    piece qk_micro 150 0 python3 "$REPO/scripts/gpu_qk_kernels.py" --json "$W/qk_micro.json"
    best=$(python3 -c "
import json, collections
t = collections.defaultdict(float)
for r in json.load(open('$W/qk_micro.json')):
    if r['code'].startswith('kernels'):
        t[r['code'].split()[1]] += 24 * r['bwd_qk_ms'] if r['tokens'] == 64 else 4 * r['fwd_bwd_ms']
print(min(t, key=t.get))" 2>/dev/null || echo $best)
  fi
  echo "kernel tiles against the shipped 4,4,1,4,5,1: $best" | tee "$W/qk_best.txt"
  for b in 128 64; do
    for r in shipped best; do
      SPRINTC_QK_BLOCKS=$([ $r = best ] && echo $best || echo 4,4,1,4,5,1) TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_$r \
        piece "y1_${r}_b$b" $([ $b = 128 ] && echo 110 || echo 75) 0 $BENCH --batch $b --modes $TMODES --parts train \
        --graphs routed $([ $b = 128 ] && echo --profile "$W/prof" --tag "${r}_") --json "$W/y1_${r}_b$b.json"
    done
  done
  SPRINTC_QK_BLOCKS=$best piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" \
    "$REPO/tests/test_cuda.py" -k "qk or cuda_graph_training or without_copies" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = y2 ]; then  # session Y, one H100: the CUDA tests of the q/k kernels after their backward's defaults
  # became 4 programs per SM at 3 stages and the weights' gradients one sum
  versions
  piece pytest_cuda 300 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "qk or cuda_graph_training or without_copies or short_attention" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = y3 ]; then  # session Y, one H100 (BASE=<the commit before> scripts/gpu_prepare.sh): the clip's norms of
  # the float32 parameters in one _foreach_norm against one vector_norm each: the routed step at 128 and 64, base / new
  # alternating, one Inductor cache per wheel; the optimizer's CUDA tests and the captured training step with the time left
  gpu_info
  versions
  base_wheel
  ab_routed y3
  piece pytest_cuda $(( 470 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_optim.py" \
    "$REPO/tests/test_cuda.py" -k "optim or adamw or clip or cuda_graph_training" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = aa4 ]; then  # session AA, one H200: the routed step at 128 and 64 as shipped, then the anchor's own SPRINT
  # step (scripts/gpu_anchor_host.py: its model, optimizer, step and timer) at 64 and 128 in one process and at 64 in two more
  gpu_info
  versions
  host_info
  piece aa4_b128_64 150 0 $BENCH --batch 128,64 --modes $TMODES --parts train --graphs routed --json "$W/aa4_b128_64.json"
  if [ $TINY = 0 ]; then
    anchor_host anchor_host_1 200 64,128
    for r in 2 3; do
      anchor_host anchor_host_$r $(( 540 - ($(date +%s) - T0) )) 64
    done
  fi
elif [ "$PHASE" = aa3 ]; then  # session AA, two H100s: every CUDA test of the code as shipped; tests/test_cuda.py but its
  # two-GPU tests on GPU 0, beside the kernel, optimizer and cuBLASLt tests on GPU 1 and then the two-GPU DDP tests
  gpu_info
  versions
  T="-v -o addopts= -p no:cacheprovider --rootdir $REPO"
  ( piece pytest_cuda 560 0 python3 -m pytest $T "$REPO/tests/test_cuda.py" -k "not ddp" ) &
  (
    piece pytest_kernels 330 1 python3 -m pytest $T "$REPO/tests/test_kernels.py" "$REPO/tests/test_optim.py" "$REPO/tests/test_cublaslt.py"
    piece pytest_ddp $(( 575 - ($(date +%s) - T0) )) 0,1 python3 -m pytest $T "$REPO/tests/test_cuda.py" -k ddp
  ) &
  wait
elif [ "$PHASE" = aa2 ]; then  # session AA, one H100: the anchor's SPRINT step at 64 in three processes, each with its kernels'
  # time by kind and its longest kernels (scripts/gpu_anchor_host.py), the card's clocks and power traced beside them
  gpu_info
  versions
  host_info
  if [ $TINY = 0 ]; then
    nvidia-smi --query-gpu=power.limit,power.max_limit,clocks.max.sm,clocks.max.mem,clocks.mem --format=csv | tee "$W/power.txt"
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv -lms 500 > "$W/smi_trace.csv" &
    SMI=$!
    for r in 1 2 3; do
      anchor_host anchor_host_$r 150 64
    done
    kill $SMI
  fi
elif [ "$PHASE" = ac1 ]; then  # session AC, one H100: the code as shipped (path-dropped samples skip the middle) at 32
  # beside the anchor's own SPRINT step at 32 (scripts/gpu_anchor_host.py); the sampling step, CFG against PDG, at 128;
  # the routed step at 64 between two more of the anchor's processes at 64
  gpu_info
  versions
  host_info
  anchor_host anchor_host_32 120 32
  piece ac1_b32 90 0 $BENCH --batch 32 --modes $TMODES --parts train --graphs routed --json "$W/ac1_b32.json"
  piece ac1_sample 150 0 $BENCH --batch 128 --modes $TMODES --parts sample --json "$W/ac1_sample.json"
  anchor_host anchor_host_64a 90 64
  piece ac1_b64 90 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ac1_b64.json"
  anchor_host anchor_host_64b $(( 590 - ($(date +%s) - T0) )) 64
elif [ "$PHASE" = ac3 ]; then  # session AC, one H100, the machine of ac1 kept warm: the anchor's SPRINT step at 64 in two
  # more processes, alternating with the routed step at 64
  gpu_info
  anchor_host anchor_host_64c 100 64
  piece ac3_b64 90 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ac3_b64.json"
  anchor_host anchor_host_64d 100 64
elif [ "$PHASE" = ac4 ]; then  # session AC, one H100 (BASE=<the commit before> scripts/gpu_prepare.sh): the fusion's
  # middle share before the scatter (fuse's split concat_linear): the routed step at 64 twice and at 128 once, base / new
  # alternating, one Inductor cache per wheel; the sampling step (CFG, PDG) at 128 each; the CUDA tests of the compiled
  # step and sampling with the time left
  gpu_info
  versions
  base_wheel
  ab_rounds ac4 64 "1 2" 90 50
  for wheel in base new; do
    ab_bench $wheel "ac4_${wheel}_b128" 80 --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/ac4_${wheel}_b128.json"
  done
  for wheel in base new; do
    ab_bench $wheel "ac4_${wheel}_sample" 70 --batch 128 --modes $TMODES --parts sample --json "$W/ac4_${wheel}_sample.json"
  done
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "inductor or cuda_graph or sampl or pdg" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = ac5 ]; then  # session AC, one H100, the machine of ac4 kept warm (its Inductor caches): the routed step
  # at 64, base / new alternating three times more; the CUDA tests of the compiled step, sampling and bf16 weights
  gpu_info
  base_wheel
  ab_rounds ac5 64 "3 4 5" 60 60
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "inductor_with or sampling_with or master_weights_train" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = ac6 ]; then  # session AC, one H100 (BASE as for ac4): the fusion's middle share before the scatter at
  # 128, base / new alternating three times; then a profile of the routed step at 64 with each wheel (three replays)
  gpu_info
  versions
  base_wheel
  ab_rounds ac6 128 "1 2 3" 90 60
  ab_profiles ac6 prof64 100
elif [ "$PHASE" = ac7 ]; then  # session AC, one H100: `sprintc train` on XL latents at 128 with the fusion's middle share
  # before the scatter (60 routed steps, then 20 full-token steps); the optimizer's and captured step's CUDA tests after
  gpu_info
  versions
  train_setup 128
  train_each 330 shipped:xl_ddp
  rm -rf "$W/latents"
  optim_tests 585
elif [ "$PHASE" = ad1 ]; then  # session AD, one H100 (BASE=<the commit before> scripts/gpu_prepare.sh): the routing glue
  # (token gather and row selection) with backward passes that copy instead of adding atomically, the stream's rows taken
  # after its gather: a profile of the routed step at 64 with each wheel, then the step at 64 base / new alternating
  # twice, one Inductor cache per wheel; last, on this host's CPU, the optimizer test that failed in ac7 and ac8
  gpu_info
  versions
  host_info
  base_wheel
  ab_profiles ad1 prof64 110
  ab_rounds ad1 64 "1 2" 55 55
  piece pytest_optim_cpu $(( 590 - ($(date +%s) - T0) )) "" python3 -m pytest -v -o addopts="" "$REPO/tests/test_optim.py" \
    -k "trains_with_it_as_with_adamw" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = ad2 ]; then  # session AD, one H100 (BASE as for ad1): the routed step at 128 base / new; at 64 with the new
  # wheel between two of the anchor's processes (scripts/gpu_anchor_host.py); the CUDA tests of the compiled step and
  # sampling with the time left
  gpu_info
  versions
  host_info
  base_wheel
  for wheel in base new; do
    ab_bench $wheel "ad2_${wheel}_b128" 90 --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/ad2_${wheel}_b128.json"
  done
  anchor_host anchor_host_64a 100 64
  ab_bench new ad2_new_b64 70 --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ad2_new_b64.json"
  anchor_host anchor_host_64b 100 64
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "inductor or cuda_graph or sampl or pdg" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = ad3 ]; then  # session AD, one H100: the adaLN modulation's matmuls alone (scripts/gpu_skinny_mm.py);
  # then the routed step at 64 between two of the anchor's processes
  gpu_info
  versions
  host_info
  [ $TINY = 0 ] && piece skinny_mm 200 0 python3 "$REPO/scripts/gpu_skinny_mm.py" --json "$W/skinny_mm.json"
  anchor_host anchor_host_64a 100 64
  piece ad3_b64 90 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ad3_b64.json"
  anchor_host anchor_host_64b $(( 590 - ($(date +%s) - T0) )) 64
elif [ "$PHASE" = ad4 ]; then  # session AD, one H100: the code as shipped, the routed step at 64 and the anchor's SPRINT
  # step at 64 (scripts/gpu_anchor_host.py), three processes each, alternating; the sampling step at 128 with the time left
  gpu_info
  versions
  host_info
  for r in 1 2 3; do
    anchor_host anchor_host_64_$r 110 64
    piece ad4_b64_$r $([ $r = 1 ] && echo 90 || echo 60) 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ad4_b64_$r.json"
  done
  piece ad4_sample $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $TMODES --parts sample --json "$W/ad4_sample.json"
elif [ "$PHASE" = ae5 ]; then  # session AE, one H100: the modulation tables' CUDA test after its spy moved to conftest
  versions
  piece pytest_cuda 300 0 python3 -m pytest -v -o addopts= -p no:cacheprovider --rootdir "$REPO" "$REPO/tests/test_cuda.py" -k modulation
elif [ "$PHASE" = ae4 ]; then  # session AE, one H100: every one-GPU CUDA test of the code as shipped (the modulation tables)
  gpu_info
  versions
  piece pytest_cuda 555 0 python3 -m pytest -v -o addopts= -p no:cacheprovider --rootdir "$REPO" "$REPO/tests/test_cuda.py" -k "not ddp"
elif [ "$PHASE" = ae3 ]; then  # session AE, one H100: the code as shipped (the modulation tables), the routed step at 64
  # and the anchor's SPRINT step at 64 (scripts/gpu_anchor_host.py), alternating, two processes each
  gpu_info
  versions
  host_info
  anchor_host anchor_host_64_1 160 64
  piece ae3_b64_1 90 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ae3_b64_1.json"
  anchor_host anchor_host_64_2 100 64
  piece ae3_b64_2 $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ae3_b64_2.json"
elif [ "$PHASE" = ai1 ]; then  # session AI, two H100s: every CUDA test of the code as shipped (as aa3): tests/test_cuda.py
  # but its two-GPU tests on GPU 0, beside the kernel, optimizer, cuBLASLt and moments tests on GPU 1, then the DDP tests
  gpu_info
  versions
  T="-v -o addopts= -p no:cacheprovider --rootdir $REPO"
  ( piece pytest_cuda 560 0 python3 -m pytest $T "$REPO/tests/test_cuda.py" -k "not ddp" ) &
  (
    piece pytest_kernels 300 1 python3 -m pytest $T "$REPO/tests/test_kernels.py" "$REPO/tests/test_optim.py" \
      "$REPO/tests/test_cublaslt.py" "$REPO/tests/test_moments.py" "$REPO/tests/test_modulation.py"
    piece pytest_ddp $(( 575 - ($(date +%s) - T0) )) 0,1 python3 -m pytest $T "$REPO/tests/test_cuda.py" -k ddp
  ) &
  wait
elif [ "$PHASE" = ai2 ]; then  # session AI, one H100: the model compiled as one graph (--no-regional) at 64 against the
  # code as shipped (regions of two blocks), after the anchor's SPRINT step at 64; then one graph with bf16 moments
  gpu_info
  versions
  host_info
  anchor_host anchor_host_64_1 150 64
  piece ai2_regional_b64 90 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ai2_regional_b64.json"
  piece ai2_whole_b64 200 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --no-regional \
    --json "$W/ai2_whole_b64.json"
  piece ai2_whole_bf16_b64 $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --modes $TMODES --parts train \
    --graphs routed --no-regional --moments bfloat16 --json "$W/ai2_whole_bf16_b64.json"
elif [ "$PHASE" = ai3 ]; then  # session AI, one H100: ai2's arms again in another order, with bf16 moments in both
  # forms: the anchor's SPRINT step at 64, then one graph, regions, one graph + bf16 moments, regions + bf16 moments
  gpu_info
  versions
  anchor_host anchor_host_64_1 145 64
  piece ai3_whole_b64 170 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --no-regional \
    --json "$W/ai3_whole_b64.json"
  piece ai3_regional_b64 90 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ai3_regional_b64.json"
  piece ai3_whole_bf16_b64 80 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --no-regional \
    --moments bfloat16 --json "$W/ai3_whole_bf16_b64.json"
  piece ai3_regional_bf16_b64 $(( 585 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --modes $TMODES --parts train \
    --graphs routed --moments bfloat16 --json "$W/ai3_regional_bf16_b64.json"
elif [ "$PHASE" = ah1 ]; then  # session AH, one H100: train.moments_dtype bfloat16 against float32 (one wheel, --moments),
  # the routed step at 64 alternating with the anchor's SPRINT step at 64 (scripts/gpu_anchor_host.py); the moments'
  # and the optimizer's CUDA tests first
  gpu_info
  versions
  host_info
  piece pytest_cuda 130 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "bf16_moments or master or cuda_graph_training" -p no:cacheprovider --rootdir "$REPO"
  moments_beside_anchor ah1 float32 bfloat16
elif [ "$PHASE" = ah3 ]; then  # session AH, one H100: the bf16 moments' kernel test (its bound 1e-7 where a moment
  # cancels to about 0; the GPU's fused multiply-adds differ there from the CPU's by more than ah2's 1e-8); the routed
  # step at 64 with bf16 and float32 moments alternating with the anchor's SPRINT step at 64, as in ah1
  gpu_info
  versions
  host_info
  piece pytest_cuda 60 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" -k "bf16_moments_as" \
    -p no:cacheprovider --rootdir "$REPO"
  moments_beside_anchor ah3 bfloat16 float32
elif [ "$PHASE" = ah2 ]; then  # session AH, one H100: the bf16 moments' kernel test again (its bound fixed for moments
  # that cancel to about 0), `sprintc train` on synthetic XL latents at 128 (60 routed + 20 full-token steps) with
  # float32 and bf16 moments for their losses, the step at 128 with each, then a profile of the step at 64 with bf16
  # moments in the time left
  gpu_info
  versions
  piece pytest_cuda 60 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" -k "bf16_moments_as" \
    -p no:cacheprovider --rootdir "$REPO"
  train_setup 128
  printf 'extends: %s\ntrain: {moments_dtype: bfloat16}\n' "$W/xl_ddp.yaml" > "$W/xl_bf16.yaml"
  train_each 120 f32:xl_ddp bf16:xl_bf16
  for m in float32 bfloat16; do
    piece ah2_${m}_b128 $([ $m = float32 ] && echo 100 || echo 70) 0 $BENCH --batch 128 --modes $TMODES --parts train \
      --graphs routed --moments $m --json "$W/ah2_${m}_b128.json"
  done
  piece ah2_bfloat16_prof $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed \
    --moments bfloat16 --json "$W/ah2_bfloat16_prof.json" --profile "$W/prof" --tag bf16_
elif [ "$PHASE" = ag4 ]; then  # session AG, one H100: the failed-capture generators test without the fix (it must fail:
  # a control that the test sees the bug), then with it
  gpu_info
  versions
  piece pytest_nofix 120 0 python3 -c "import sys, pytest, sprintc.targets_api as T; T._end_generator_capture = lambda gens: None; \
sys.exit(pytest.main(['-v', '-o', 'addopts=', '-p', 'no:cacheprovider', '--rootdir', '$REPO', '$REPO/tests/test_cuda.py', '-k', 'failed_capture']))"
  piece pytest_fix 120 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" -k "failed_capture" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = ag3 ]; then  # session AG, one H100: the CUDA tests of a failed capture's generators and of the
  # captured training step; the code as shipped, the routed step at 64 and the anchor's SPRINT step at 64
  # (scripts/gpu_anchor_host.py), alternating, two processes each
  gpu_info
  versions
  host_info
  piece pytest_cuda 90 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "failed_capture or cuda_graph_training or master" -p no:cacheprovider --rootdir "$REPO"
  anchor_host anchor_host_64_1 160 64
  piece ag3_b64_1 90 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ag3_b64_1.json"
  anchor_host anchor_host_64_2 100 64
  piece ag3_b64_2 $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ag3_b64_2.json"
elif [ "$PHASE" = ag2 ]; then  # session AG, one H100 (BASE=cfc087a scripts/gpu_prepare.sh): ag1 again after the
  # captured step's stream got high priority (the norm's sums, at default priority, take only the SMs it leaves idle)
  ab_at_64 ag2
elif [ "$PHASE" = ag1 ]; then  # session AG, one H100 (BASE=cfc087a scripts/gpu_prepare.sh): the clip norm's sums on
  # a side stream during the backward (MasterAdamW.norm_in_backward): profiles of the routed step at 64, base / new;
  # the step at 64 twice more, alternating; the optimizer's and the captured step's CUDA tests with the time left
  ab_at_64 ag1
elif [ "$PHASE" = af9 ]; then  # session AF, one H100: af8 again after the float32 AdamW kernel's whole blocks were
  # made unmasked (b70b66b; back to masked in 1624da2) and its CUDA test's steps moved off 1
  gpu_info
  versions
  profile_and_optim_tests af9_new_prof 240
elif [ "$PHASE" = af8 ]; then  # session AF, one H100: af7's new arm again after its kernel argument was renamed (a
  # kernel argument named `params` failed in Triton's binder on the GPU): the profile of the routed step at 64 (new
  # only: af7 has the base's), the optimizer's and the captured step's CUDA tests
  gpu_info
  versions
  profile_and_optim_tests af8_new_prof 380
elif [ "$PHASE" = af7 ]; then  # session AF, one H100 (BASE=52632e0 scripts/gpu_prepare.sh): MasterAdamW's float32
  # parameters in one kernel of ours (adamw_float32_): profiles of the routed step at 64, base / new; the optimizer's
  # and the captured step's CUDA tests with the time left
  gpu_info
  versions
  base_wheel
  ab_profiles af7 prof 110
  piece pytest_cuda $(( 560 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "adamw or master or cuda_graph_training" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = af6 ]; then  # session AF, one H100: af5 with the sliced optimizer's programs per SM, warps and
  # pipeline stages tried alone first (the best kept per slice), slices of 16, 32 and 48 SMs
  gpu_info
  versions
  [ $TINY = 0 ] && piece sliced_probe2 500 0 python3 "$REPO/scripts/gpu_sliced_overlap_probe.py" "$SPEC" --batch 64 \
    --slices 16,32,48 --json "$W/sliced_probe2.json"
elif [ "$PHASE" = af5 ]; then  # session AF, one H100: could the optimizer hide beside the next forward if each took
  # part of the GPU (scripts/gpu_sliced_overlap_probe.py: a sliced persistent optimizer, the forward's matmuls carved out)
  gpu_info
  versions
  [ $TINY = 0 ] && piece sliced_probe 420 0 python3 "$REPO/scripts/gpu_sliced_overlap_probe.py" "$SPEC" --batch 64 \
    --slices 16,32 --json "$W/sliced_probe.json"
elif [ "$PHASE" = af4 ]; then  # session AF, one H100 (BASE=90d8849 scripts/gpu_prepare.sh): cuBLASLt's candidates
  # without workspace (no memset per launch) and MasterAdamW's float32 parameters in its own kernel: profiles of the
  # routed step at 64, base / new; the step at 64 twice more, alternating, one Inductor cache each; the CUDA tests of
  # the matmuls, the GELU epilogues and the optimizer with the time left
  gpu_info
  versions
  base_wheel
  ab_profiles af4 prof 120
  ab_rounds af4 64 "2 3" 75 75
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "tuned or gelu or adamw or master or cuda_graph_training" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = af3 ]; then  # session AF, one H100: af2 again with the launches captured in CUDA graphs, and plans
  # without workspace beside the shipped ones
  gpu_info
  versions
  [ $TINY = 0 ] && piece memsets_captured 200 0 python3 "$REPO/scripts/gpu_memsets.py" --json "$W/memsets_captured.json"
elif [ "$PHASE" = af2 ]; then  # session AF, one H100: which cuBLASLt launches come with a memset, by candidate and
  # workspace (scripts/gpu_memsets.py)
  gpu_info
  versions
  [ $TINY = 0 ] && piece memsets 200 0 python3 "$REPO/scripts/gpu_memsets.py" --json "$W/memsets.json"
elif [ "$PHASE" = af1 ]; then  # session AF, one H100: where the step at 64 still loses time. The GELU epilogues' and the
  # blocks' matmuls with 32 of cuBLASLt's candidates against the first 8 (sprintc's CANDIDATES), at batch 64's sizes;
  # the captured routed step at 64 under the profiler, every kernel in order (scripts/gpu_step_gaps.py --order)
  gpu_info
  versions
  [ $TINY = 0 ] && piece gelu_algos 150 0 python3 "$REPO/scripts/gpu_gelu_algos.py" --rows 3712,16384 --candidates 32 --json "$W/gelu_algos.json"
  [ $TINY = 0 ] && piece matmul_algos 200 0 python3 "$REPO/scripts/gpu_matmul_algos.py" --batch 64 --candidates 32 --json "$W/matmul_algos.json"
  [ $TINY = 0 ] && piece step_trace 180 0 python3 "$REPO/scripts/gpu_step_gaps.py" "$SPEC" "$W/step_gaps_b64.txt" --batch 64 --order "$W/step_kernels_b64.tsv"
elif [ "$PHASE" = ae2 ]; then  # session AE, one H100 (BASE as for ae1): the routed step at 128 twice and at 64 once,
  # base / new alternating, one Inductor cache each; the anchor's step at 64 (scripts/gpu_anchor_host.py); the sampling
  # step at 128 with the new wheel with the time left
  gpu_info
  versions
  host_info
  base_wheel
  ab_rounds ae2 128 "1 2" 90 60
  ab_rounds ae2 64 1 80 80
  anchor_host anchor_host_64 110 64
  ab_bench new ae2_sample $(( 590 - ($(date +%s) - T0) )) --batch 128 --modes $TMODES --parts sample --json "$W/ae2_sample.json"
elif [ "$PHASE" = ae1 ]; then  # session AE, one H100 (BASE=<the commit before> scripts/gpu_prepare.sh): the modulation
  # tables (target.batch_modulation): profiles of the routed step at 64, base / new (cold compiles); the step at 64 twice
  # more and at 128 once, alternating, one Inductor cache each; their CUDA tests with the time left
  gpu_info
  versions
  base_wheel
  ab_profiles ae1 prof 110
  ab_rounds ae1 64 "2 3" 60 60
  ab_rounds ae1 128 1 90 90
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "modulation or cuda_graph_training or master_weights" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = ad5 ]; then  # session AD, one H100 (BASE=<the commit before> scripts/gpu_prepare.sh): target.tuned_matmuls
  # timing each candidate on the GPU alone (calls captured in a CUDA graph) instead of from the host: the probe of the
  # modulation's matmuls timed that way; the routed step at 64 twice and at 128 once, base / new alternating, one
  # Inductor cache each; the tuned matmuls' CUDA test with the time left
  gpu_info
  versions
  base_wheel
  [ $TINY = 0 ] && piece skinny_mm 120 0 python3 "$REPO/scripts/gpu_skinny_mm.py" --json "$W/skinny_mm.json"
  ab_rounds ad5 64 "1 2" 90 55
  ab_rounds ad5 128 1 90 90
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" \
    -k "tuned_matmuls" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = ac8 ]; then  # session AC, one H100: the optimizer's and captured step's CUDA tests after the fusion's
  # weight slices were made contiguous (ac7's run of them failed one CPU test on torch 2.11)
  versions
  optim_tests 300
elif [ "$PHASE" = ac9 ]; then  # session AC, one H100 (its CPU): where float32 weights under autocast and bf16 weights
  # first differ in a transformed model's step on this host's CPU, fuse's split on and off (scripts/gpu_diag_split.py of 6d3a8b1, copied onto a checkout of af67a7a: it needs that trial)
  versions
  host_info
  piece diag_split 120 0 python3 "$REPO/scripts/gpu_diag_split.py" "$REPO/tests"
  OMP_NUM_THREADS=2 piece diag_split_2threads 120 0 python3 "$REPO/scripts/gpu_diag_split.py" "$REPO/tests"
elif [ "$PHASE" = ac2 ]; then  # session AC, one H200: the code as shipped, the routed step at 128, 64 and 32, the sampling
  # step at 128; the anchor's own SPRINT step at 64 and 32, then at 128 with the time left
  gpu_info
  versions
  host_info
  piece ac2_train 200 0 $BENCH --batch 128,64,32 --modes $TMODES --parts train --graphs routed --json "$W/ac2_train.json"
  anchor_host anchor_host_64_32 150 64,32
  piece ac2_sample 120 0 $BENCH --batch 128 --modes $TMODES --parts sample --json "$W/ac2_sample.json"
  anchor_host anchor_host_128 $(( 590 - ($(date +%s) - T0) )) 128
elif [ "$PHASE" = ab1 ]; then  # session AB, one H100 (BASE=<the commit before> scripts/gpu_prepare.sh): path drop's
  # skip_middle (the dropped samples skip the middle blocks): the routed step at 128 and 64, base / new alternating, one
  # Inductor cache per wheel; the optimizer's and the captured step's CUDA tests with the time left
  gpu_info
  versions
  base_wheel
  ab_routed ab1
  optim_tests 585
elif [ "$PHASE" = ab2 ]; then  # session AB, one H100: the code as shipped beside the anchor's own SPRINT step at 64 in three
  # processes (scripts/gpu_anchor_host.py), alternating with the routed step at 128 and 64, then at 64 again; `sprintc
  # train` on XL latents at 128 with the time left
  gpu_info
  versions
  host_info
  anchor_host anchor_host_1 150 64
  piece ab2_b128_64 150 0 $BENCH --batch 128,64 --modes $TMODES --parts train --graphs routed --json "$W/ab2_b128_64.json"
  anchor_host anchor_host_2 90 64
  piece ab2_b64 70 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ab2_b64.json"
  anchor_host anchor_host_3 90 64
  train_setup 128
  train_each $(( 590 - ($(date +%s) - T0) )) shipped:xl_ddp
  rm -rf "$W/latents"
elif [ "$PHASE" = ab3 ]; then  # session AB, one H100: the code as shipped beside the anchor's own SPRINT step at 128, then
  # at 64 in two more processes, alternating with sprintc's routed step (and its dense step at 128)
  gpu_info
  versions
  anchor_host anchor_host_128 200 128
  piece ab3_b128 200 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed,dense --json "$W/ab3_b128.json"
  anchor_host anchor_host_64a 90 64
  piece ab3_b64 90 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/ab3_b64.json"
  anchor_host anchor_host_64b 80 64
elif [ "$PHASE" = ab4 ]; then  # session AB, two H100s: tests/test_cuda.py but its two-GPU tests on GPU 0 (the code as
  # shipped, path-dropped samples skipping the middle); then `sprintc train` under torchrun, DDP on both GPUs (each rank
  # draws its own middle rows), on XL latents at 128 per GPU
  gpu_info
  versions
  train_setup 128
  piece pytest_cuda 400 0 python3 -m pytest -v -o addopts= -p no:cacheprovider --rootdir "$REPO" "$REPO/tests/test_cuda.py" -k "not ddp"
  train_ddp2 $(( 590 - ($(date +%s) - T0) )) ddp:xl_ddp
  rm -rf "$W/latents"
elif [ "$PHASE" = ab5 ]; then  # session AB, one H100 (BASE=7956775 scripts/gpu_prepare.sh): where the skip's time goes at
  # 64: profiles of the routed step (three replays) with the base wheel and this one, one Inductor cache each
  gpu_info
  versions
  base_wheel
  ab_profiles ab5 b64 150
elif [ "$PHASE" = ab6 ]; then  # session AB, one H100 (BASE=84a1532 scripts/gpu_prepare.sh): the row selection folded into
  # the token gather (one gather over the flattened batch; 6608804, reverted: no gain): the routed step at 128 and 64,
  # base / new alternating
  gpu_info
  versions
  base_wheel
  ab_routed ab6
elif [ "$PHASE" = aa1 ]; then  # session AA, one H100: is the anchor's SPRINT step waiting on its host? Its own model and
  # step at 64 and 128 with host and kernel times (scripts/gpu_anchor_host.py), the host's CPU; then the code as shipped:
  # the routed step at 64 and 128, `sprintc train` on XL latents at 128, the optimizer's CUDA tests with the time left
  gpu_info
  versions
  host_info
  anchor_host anchor_host 230 64,128
  piece aa1_b64 90 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/aa1_b64.json"
  piece aa1_b128 110 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/aa1_b128.json"
  train_setup 128
  train_each 150 shipped:xl_ddp
  rm -rf "$W/latents"
  optim_tests 585
elif [ "$PHASE" = z1 ]; then  # session Z, one H100 (BASE=<the commit before> scripts/gpu_prepare.sh): the masters held
  # as the bf16 weights plus int16 low parts (26 bytes per parameter and step, not 28): the routed step at 128 and 64, base
  # / new alternating, one Inductor cache per wheel; the optimizer's kernels alone; its CUDA tests with the time left
  gpu_info
  versions
  base_wheel
  ab_routed z1
  [ $TINY = 0 ] && piece adamw_micro 60 0 python3 "$REPO/scripts/gpu_adamw.py" "$W/adamw.json"
  optim_tests 560
elif [ "$PHASE" = z2 ]; then  # session Z, one H100: the code as shipped at 128 (routed and dense steps, sampling), the routed
  # step at 64 and 32, then the anchor at 64 again (z1 and w5 ran it once)
  gpu_info
  versions
  piece z2_b128 230 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --graphs routed,dense --json "$W/z2_b128.json"
  piece z2_b64_32 130 0 $BENCH --batch 64,32 --modes $TMODES --parts train --graphs routed --json "$W/z2_b64_32.json"
  [ $TINY = 0 ] && piece anchor_b64 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 64)
elif [ "$PHASE" = z3 ]; then  # session Z, one H100: the routed step at 128 beside the anchor once more (the end of w5)
  gpu_info
  piece z3_b128 110 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/z3_b128.json"
  [ $TINY = 0 ] && piece anchor_b128 $(( 330 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = x3 ]; then  # session X, one H100 (what was left of its device time): the compiled-against-eager CUDA
  # tests that x2 did not run, with the token sums looped: the scale-shift table's gradients (sums over tokens), sampling
  # with the GELU epilogue as shipped, training with tuned matmuls, the compiled attention
  versions
  piece pytest_cuda 215 0 python3 -m pytest -v -o addopts="" -p no:cacheprovider --rootdir "$REPO" \
    "$REPO/tests/test_cuda.py::test_inductor_gradients_of_a_scale_shift_table_are_eagers" \
    "$REPO/tests/test_cuda.py::test_sampling_with_the_gelu_epilogue_equals_eager[1]" \
    "$REPO/tests/test_cuda.py::test_compiled_attention_bf16_close_to_float32" \
    "$REPO/tests/test_cuda.py::test_inductor_with_tuned_matmuls_trains_as_eager"
elif [ "$PHASE" = w5 ]; then  # session W, one H100: the code as shipped beside the anchor, batch 128 then 64, in sequence
  gpu_info
  versions
  piece w5_b128 120 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/w5_b128.json"
  [ $TINY = 0 ] && piece anchor_b128 230 0 $(anchor 128)
  piece w5_b64 90 0 $BENCH --batch 64 --modes $TMODES --parts train --graphs routed --json "$W/w5_b64.json"
  [ $TINY = 0 ] && piece anchor_b64 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 64)
elif [ "$PHASE" = w6 ]; then  # session W, one H100: the anchor's training rows at 128 (stopped in its sampling), then the
  # routed step at 128 as shipped and with target.tune, one cache each, in sequence on the same card
  gpu_info
  [ $TINY = 0 ] && piece anchor_b128 180 0 $(anchor 128)
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_shipped piece w6_b128 100 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/w6_b128.json"
  TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_tune piece w6_b128_tune $(( 590 - ($(date +%s) - T0) )) 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --tune --json "$W/w6_b128_tune.json"
elif [ "$PHASE" = v5 ]; then  # after session V, one H100 (BASE=d1a6da4 scripts/gpu_prepare.sh): short_attention's softmax
  # scale as a constant (float32 softmax in compiled steps) against BASE's float argument (float64 under Inductor): the
  # routed step at 128 and 64, base / new alternating, one Inductor cache per wheel; the compiled-against-eager CUDA tests
  ab_phase v5 "short_attention or qk_kernels_equals_eager or cuda_graph_training"
elif [ "$PHASE" = u1 ]; then  # session U, one H100: XL's matmuls alone, torch's cuBLAS against each cuBLASLt candidate
  # (scripts/gpu_matmul_algos.py); the code as shipped at 128 (routed, dense, sampling), the routed step at 128 with
  # TORCH_BLAS_PREFER_CUBLASLT=1 (Inductor's cache warm), the routed step at 64 and 32; the anchor at 64
  gpu_info
  versions
  [ $TINY = 0 ] && piece matmul_algos 150 0 python3 "$REPO/scripts/gpu_matmul_algos.py" --json "$W/matmul_algos.json"
  piece u1_b128 200 0 $BENCH --batch 128 --modes $TMODES --parts train,sample --graphs routed,dense --json "$W/u1_b128.json"
  TORCH_BLAS_PREFER_CUBLASLT=1 piece u1_b128_lt 80 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/u1_b128_lt.json"
  piece u1_b64_32 160 0 $BENCH --batch 64,32 --modes $TMODES --parts train --graphs routed --json "$W/u1_b64_32.json"
  [ $TINY = 0 ] && piece anchor_b64 $(( 590 - ($(date +%s) - T0) )) 0 $(anchor 64)
elif [ "$PHASE" = u2 ]; then  # session U, one H100: target.tuned_matmuls on (as committed) against --no-tuned-matmuls:
  # the routed step and the sampling steps at 128, in turn, twice, one Inductor cache each; the routed step at 64, on
  # then off; then the CUDA tests of the tuned matmuls and of the compiled-against-eager paths
  gpu_info
  versions
  for r in on off on off; do
    n=$(( ${n:-0} + 1 ))
    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_tm$r piece "u2_${r}_$n" $([ $n -le 2 ] && echo 130 || echo 80) 0 $BENCH --batch 128 \
      --modes $TMODES --parts train,sample --graphs routed $([ $r = off ] && echo --no-tuned-matmuls) --json "$W/u2_${r}_$n.json"
  done
  for r in on off; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_tm$r piece "u2_b64_$r" 90 0 $BENCH --batch 64 --modes $TMODES --parts train \
      --graphs routed $([ $r = off ] && echo --no-tuned-matmuls) --json "$W/u2_b64_$r.json"
  done
  piece pytest_cuda $(( 590 - ($(date +%s) - T0) )) 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" "$REPO/tests/test_cublaslt.py" \
    -k "tuned or qk_kernels_equals_eager or cuda_graph_training or gelu_epilogue or cublaslt" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = u3 ]; then  # session U, one H100: the CUDA tests of the tuned matmuls; the routed step at 128 as
  # shipped (target.tuned_matmuls on), then the anchor at 128 in the same call; ends by ~480 s
  gpu_info
  versions
  piece pytest_cuda 130 0 python3 -m pytest -v -o addopts="" "$REPO/tests/test_cuda.py" -k "tuned" -p no:cacheprovider --rootdir "$REPO"
  piece u3_b128 120 0 $BENCH --batch 128 --modes $TMODES --parts train --graphs routed --json "$W/u3_b128.json"
  [ $TINY = 0 ] && piece anchor_b128 $(( 480 - ($(date +%s) - T0) )) 0 $(anchor 128)
elif [ "$PHASE" = p6 ]; then  # session P, one H100: `sprintc train` on XL latents at 128 as shipped (losses against session N's)
  gpu_info
  versions
  train_setup 128
  train_each 170 shipped:xl_ddp
elif [ "$PHASE" = o4 ]; then  # session O, one H100: the CUDA, kernel and optimizer tests of the code as shipped
  gpu_info
  versions
  piece pytest_cuda 400 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" "$REPO/tests/test_optim.py" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = qkprof ]; then  # after session I, one GPU: torch.profiler views of `sprintc train`'s routed steps at 128
  # with the q/k kernels forced into the training step (SPRINTC_QK_KERNELS=always) and without them (as shipped), to
  # find what makes that step slower although the kernels alone are faster (docs/PERFORMANCE.md, session I)
  gpu_info
  versions
  [ $TINY = 0 ] && piece sdpa_layout 90 0 python3 "$REPO/scripts/gpu_sdpa_layout.py" "$W/sdpa_layout.json"
  train_setup 128 45  # the profile's schedule waits 35 steps, warms up 3 and records 5
  for r in always off; do
    piece "trainprof_$r" 200 0 env SPRINTC_QK_KERNELS=$([ $r = always ] && echo always || echo sampling) \
      python3 "$REPO/scripts/gpu_train_profile.py" "$W/xl_ddp.yaml" "$W/run_prof_$r" "$W/trainprof_$r.txt"
    [ -f "$W/run_prof_$r/metrics.jsonl" ] && cp "$W/run_prof_$r/metrics.jsonl" "$W/trainprof_${r}_metrics.jsonl"
    rm -rf "$W/run_prof_$r"
  done
  rm -rf "$W/latents"
  left=$(( 570 - ($(date +%s) - T0) )); [ $left -lt 30 ] && left=30
  piece pytest_cuda $left 0 python3 -m pytest -q "$REPO/tests/test_cuda.py" "$REPO/tests/test_kernels.py" -k "qk or kernel" -p no:cacheprovider --rootdir "$REPO"
elif [ "$PHASE" = ddp-ro ]; then  # DDP 1 -> 2 GPUs with CUDA graphs per compiled region (target.mode reduce-overhead)
  ddp_piece ddp_ro_w1 150 0 --mode reduce-overhead
  ddp_piece ddp_ro_w2 150 0,1 --mode reduce-overhead
elif [ "$PHASE" = ddp ]; then   # DDP alone: 1 then 2 GPUs (CAP seconds in all, default 240)
  CAP=${CAP:-240}
  ddp_piece ddp_w1 $(( CAP / 2 )) 0 --warmup 2
  ddp_piece ddp_w2 $(( CAP - ($(date +%s) - T0) )) 0,1 --warmup 2
elif [ "$PHASE" = 1 ]; then
  gpu_info
  versions
  (
    piece bench_b128 300 0 $BENCH --batch 128 --modes $MODES --clip both --parts train,sample --json "$W/bench_b128.json" --profile "$W/prof"
    [ $TINY = 0 ] && piece anchor_b128 $(( 585 - ($(date +%s) - T0) )) 0 $(anchor 128)
  ) &
  (
    piece bench_b64_32 220 1 $BENCH --batch 64,32 --modes ${MODES/eager,/} --parts train --json "$W/bench_b64_32.json"
    piece sample250 160 1 $BENCH --batch 64 --parts sample250,sample250g --images 64 --sample-steps $([ $TINY = 1 ] && echo 3 || echo 250) --json "$W/sample250.json"
    [ $TINY = 0 ] && piece anchor_b64 $(( 585 - ($(date +%s) - T0) )) 1 $(anchor 64)
  ) &
  wait
else
  left() { local r=$(( ${1:-470} - ($(date +%s) - T0) )); [ $r -lt 10 ] && r=10; echo $r; }
  ddp_piece ddp_w1 120 0 &
  [ $TINY = 0 ] && piece anchor_b32 230 1 $(anchor 32) &
  wait
  ddp_piece ddp_w2 130 0,1
  if [ $TINY = 0 ]; then
    piece bench_b32 $(left) 1 $BENCH --batch 32 --modes compiled,cudagraph --parts train --json "$W/bench_b32.json" --profile "$W/prof" --tag b32_ &
    piece bench_b128_autotune $(left) 0 $BENCH --batch 128 --modes compiled,cudagraph --graphs routed --mode max-autotune-no-cudagraphs --parts train --json "$W/bench_b128_autotune.json" &
    wait
  fi
fi
pack
python3 "$REPO/scripts/gpu_summary.py" "$W"
echo "total $(( $(date +%s) - T0 ))s"
