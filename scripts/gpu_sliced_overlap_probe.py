"""Could the optimizer hide beside the next forward if each took only part of the GPU? (session AF's probe, one GPU)

Session Q's probe (scripts/gpu_overlap_probe.py) ran the clip norm and AdamW on a second stream beside the forward
and saved nothing: the two branches ran one after the other. Two reasons are likely: the AdamW kernel's grid (one
program per 2,048 parameters, 331k programs for XL) fills every SM until it drains, and cuBLAS's persistent matmuls
launch one program per SM, so a matmul that finds some SMs taken runs a second wave. This probe gives each side a
share: the optimizer's kernels run as persistent grids of SLICE_SMS * 2 programs (grid-stride loops over the same
flat buffers, the same 26 bytes per parameter), and the forward's matmuls are told to leave SLICE_SMS SMs free
(torch's `_set_sm_carveout_experimental` for torch's cuBLAS calls, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET for
sprintc's own cuBLASLt launches). The routed XL step at BATCH, captured in a CUDA graph as `sprintc bench` captures
it, in these arms, alternating, each captured afresh, median of --steps replays:
- shipped: forward, backward, clip norm and AdamW (MasterAdamW) on one stream;
- no_opt: forward and backward only (the floor);
- carved_S: no_opt with the forward's matmuls leaving S SMs (what the carve-out costs the forward);
- overlap_S: the sliced norm and AdamW on a second stream beside the carved forward, reading stand-in gradients (zeros);
  the forward waits for none of its updates, so this is not a training step: its time bounds what a deferred update
  could save;
and, alone on the GPU, the sliced optimizer's time (opt_alone_S) against MasterAdamW's own kernels (opt_alone_full).
    python3 scripts/gpu_sliced_overlap_probe.py specs/sit_xl_sprint.yaml --batch 64 --slices 16,32 [--json FILE]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import sys

import torch
import triton
import triton.language as tl

from gpu_overlap_probe import replay_ms
from sprintc import cublaslt
from sprintc.bench import Bench, _loss_fn, _make_opt, _set_routing, _train_step
from sprintc.spec import load_spec
from sprintc.targets_api import CudaGraphStep, resolve_target

BLOCK, SM_COUNT_TARGET = 2048, 15  # cublasLt.h: CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET
_sm_target = [0]  # 0: cuBLASLt's default (every SM)


def _launch_with_target(plan, device, a, b, out, candidate):
    cublaslt._set("cublasLtMatmulDescSetAttribute", plan[0], SM_COUNT_TARGET, ctypes.c_int32(_sm_target[0]))
    return _shipped_launch(plan, device, a, b, out, candidate)


_shipped_launch = cublaslt._launch
cublaslt._launch = _launch_with_target


@triton.jit
def _sq_sum_sliced(grads, partial, n_blocks, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    pid, nprog = tl.program_id(0), tl.num_programs(0)
    acc = tl.zeros([BLOCK], tl.float32)
    for blk in tl.range(pid, n_blocks, nprog, num_stages=STAGES):
        g = tl.load(grads + blk * BLOCK + tl.arange(0, BLOCK)).to(tl.float32)
        acc += g * g
    tl.store(partial + pid, tl.sum(acc))


@triton.jit
def _adamw_sliced(weights, low, exp_avg, exp_avg_sq, grads, scale_ptr, n_blocks, lr, beta1, beta2, eps, wd, bias1,
                  bias2, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    # MasterAdamW's update (sprintc/kernels.py) over a grid-stride loop: the same loads and stores per parameter
    pid, nprog = tl.program_id(0), tl.num_programs(0)
    scale = tl.load(scale_ptr)
    for blk in tl.range(pid, n_blocks, nprog, num_stages=STAGES):
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        g = tl.div_rn(tl.load(grads + offs).to(tl.float32), scale)
        p = ((tl.load(weights + offs).to(tl.int32) << 16) + tl.load(low + offs).to(tl.int32)).to(tl.float32,
                                                                                                bitcast=True)
        m = tl.load(exp_avg + offs)
        v = tl.load(exp_avg_sq + offs)
        p = p * (1.0 - lr * wd)
        m = m + (1.0 - beta1) * (g - m)
        v = v * beta2 + (1.0 - beta2) * g * g
        p = p - (lr / bias1) * tl.div_rn(m, tl.sqrt_rn(v) / tl.sqrt_rn(bias2) + eps)
        bits = p.to(tl.int32, bitcast=True)
        hi = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        tl.store(weights + offs, hi.to(tl.int16))
        tl.store(low + offs, tl.minimum(bits - (hi << 16), 32767).to(tl.int16))
        tl.store(exp_avg + offs, m)
        tl.store(exp_avg_sq + offs, v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--slices", default="16,32,48")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    spec = load_spec(args.spec)
    bench = Bench(spec, resolve_target(spec.target, name="inductor"), dev, steps=args.steps, warmup=3)
    model = bench._model("inductor")
    model.train()
    _set_routing(model, True)
    opt = _make_opt(model, spec, dev, bench.master, capturable=True)
    if getattr(opt, "low", None) is None:
        sys.exit("the probe needs MasterAdamW (train.master_weights with bf16)")
    n = opt.weights.numel()  # a multiple of BLOCK (optim._aligned)
    n_blocks = n // BLOCK
    stand_in = torch.zeros(n, dtype=torch.bfloat16, device=dev)
    params = list(model.parameters())
    max_norm = spec.train.grad_clip
    gen = model.sprint.generator
    gens = [gen] if gen is not None and gen.device.type == "cuda" else []
    opt_stream = torch.cuda.Stream(dev)
    x, t, y, tgt = bench._data(args.batch)
    batch = {"x": x, "t": t, "y": y, "target": tgt}
    g0 = opt.param_groups[0]
    (beta1, beta2), eps, wd, lr = g0["betas"], g0["eps"], g0["weight_decay"], 1e-4
    step_k = 10.0

    best = {}  # slice -> (programs per SM, warps, stages) with the least time alone

    def sliced_opt(s, config=None):
        per_sm, warps, stages = config or best[s]
        programs = per_sm * s
        partial = torch.empty(programs, dtype=torch.float32, device=dev)
        _sq_sum_sliced[(programs,)](stand_in, partial, n_blocks, BLOCK=BLOCK, STAGES=stages, num_warps=warps)
        scale = torch.clamp((partial.sum().sqrt() + 1e-6) / max_norm, min=1.0)
        _adamw_sliced[(programs,)](opt.weights.view(torch.int16), opt.master_low, opt.exp_avg, opt.exp_avg_sq,
                                   stand_in, scale, n_blocks, lr, beta1, beta2, eps, wd, 1 - beta1 ** step_k,
                                   1 - beta2 ** step_k, BLOCK=BLOCK, STAGES=stages, num_warps=warps)

    def carve(s):
        torch._C._set_sm_carveout_experimental(s if s else None)
        _sm_target[0] = sms - s if s else 0

    def forward_backward(b, s=0):
        opt.zero_grad(set_to_none=True)
        carve(s)
        loss = _loss_fn(model, b["x"], b["t"], b.get("y"), b["target"])
        carve(0)
        loss.backward()
        return loss.detach()

    def overlap(b, s):
        for p in params:
            p.grad = None
        main_stream = torch.cuda.current_stream()
        opt_stream.wait_stream(main_stream)
        with torch.cuda.stream(opt_stream):
            sliced_opt(s)
        carve(s)
        loss = _loss_fn(model, b["x"], b["t"], b.get("y"), b["target"])
        carve(0)
        main_stream.wait_stream(opt_stream)
        loss.backward()
        return loss.detach()

    slices = [int(v) for v in args.slices.split(",")]
    arms = {"shipped": lambda b: _train_step(model, opt, (b["x"], b["t"], b.get("y"), b["target"]), max_norm,
                                              "fused").detach(),
            "no_opt": forward_backward}
    for s in slices:
        arms[f"carved_{s}"] = lambda b, s=s: forward_backward(b, s)
        arms[f"overlap_{s}"] = lambda b, s=s: overlap(b, s)
    rows = []

    def row(**r):
        rows.append(r)
        print(json.dumps(r), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "sms": sms,
                           "rows": rows}, f, indent=1)

    for s in slices:  # the sliced optimizer alone, eager, by programs per SM, warps and pipeline stages; the best kept
        times = {}
        for config in [(p, w, st) for p in (2, 4, 8) for w in (4, 8) for st in (1, 3)]:
            if config[0] * config[1] > 64:  # (warps per SM)
                continue
            try:
                times[config] = round(replay_ms(lambda: sliced_opt(s, config), 5), 3)
            except Exception as e:  # noqa: BLE001 - a configuration Triton refuses is left out
                row(arm=f"opt_alone_{s}", config=config, error=f"{type(e).__name__}: {e}"[:200])
                continue
            row(arm=f"opt_alone_{s}", config=config, ms=times[config])
        best[s] = min(times, key=times.get)
        row(arm=f"opt_alone_{s}_best", config=best[s], ms=round(replay_ms(lambda: sliced_opt(s), args.steps), 3))
    for p in opt.low:
        p.grad = stand_in[opt._view_of[id(p)]].view(p.shape)
    row(arm="opt_alone_full", ms=round(replay_ms(lambda: opt.clip_and_step(max_norm), args.steps), 3))
    for p in params:
        p.grad = None
    for r in range(args.rounds):
        for name, fn in arms.items():
            torch.cuda.empty_cache()
            out = {"batch": args.batch, "arm": name, "round": r}
            step = None
            try:
                step = CudaGraphStep(fn, generators=gens, optimizer=opt)
                for _ in range(step.warmup + 1):
                    step(batch)
                torch.cuda.synchronize()
                out["ms"] = round(replay_ms(lambda: step(batch), args.steps), 2)
                step.release()
            except Exception as e:  # noqa: BLE001 - an arm that fails must not lose the others
                out["error"] = f"{type(e).__name__}: {e}"[:400]
            carve(0)
            row(**out)
            step = None
            for p in params:
                p.grad = None
    for name in arms:
        ms = [r["ms"] for r in rows if r.get("arm") == name and "ms" in r]
        print(f"batch {args.batch} {name:14s} " + " ".join(f"{m:.2f}" for m in ms))


if __name__ == "__main__":
    main()
