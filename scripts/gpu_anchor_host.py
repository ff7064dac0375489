"""Is the anchor's SPRINT step waiting on its host? (session AA)

The anchor (../shared/bench/anchor_dit.py) compiles its whole model without CUDA graphs, so each step's Python,
guards and kernel launches run on the host. Its SPRINT step at batch 64 took 53.2-53.8 ms on some machines and
59-62.5 ms on others while its dense step stayed at 119-122 ms. This script runs the anchor's own model and step
(its DiT class, fused AdamW, bf16 autocast, `torch.compile` of the whole model) and measures per step:
- the step as the anchor times it (CUDA events around one step, median of STEPS);
- the host's time to queue one step with the GPU idle before it (from a synchronize to the step's return), beside
  the time until the GPU has finished it;
- under torch.profiler: the kernels' busy time and the GPU's idle time between kernels (scripts/gpu_gaps.py), and the
  kernels' time per step by kind and the longest kernels by name (to set a fast run's beside a slow one's).

    python3 scripts/gpu_anchor_host.py .gpu/anchor_dit.py --batch 64,128 [--json OUT.json]
"""
import argparse
import collections
import importlib.util
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from gpu_gaps import device_intervals, gap_report


def kind(name: str) -> str:
    if any(k in name for k in ("nvjet", "gemm", "cutlass", "cublas", "sm90_xmma")):
        return "matmul"
    if "multi_tensor_apply" in name:
        return "optimizer"
    if "flash" in name or "fmha" in name or "attention" in name:
        return "attention"
    return "triton" if name.startswith("triton_") else "other"


def kernel_table(intervals, steps: int, top: int = 25):
    by_name, by_kind = collections.defaultdict(lambda: [0.0, 0]), collections.defaultdict(float)
    for s, e, name in intervals:
        by_name[name][0] += (e - s) / 1000 / steps
        by_name[name][1] += 1
        by_kind[kind(name)] += (e - s) / 1000 / steps
    names = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    return ({k: round(v, 3) for k, v in sorted(by_kind.items())},
            [[round(ms, 4), n // steps, name[:110]] for name, (ms, n) in names])


ap = argparse.ArgumentParser()
ap.add_argument("anchor")
ap.add_argument("--batch", default="64")
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--dense", action="store_true", help="the anchor's dense model instead of its SPRINT one")
ap.add_argument("--json")
ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script (with torch.cuda stubbed by the caller)")
args = ap.parse_args()

load = importlib.util.spec_from_file_location("anchor_dit", args.anchor)
anchor = importlib.util.module_from_spec(load)
load.loader.exec_module(anchor)
torch.backends.cuda.matmul.allow_tf32 = True
dev = args.device
rows = []
for batch in (int(b) for b in args.batch.split(",")):
    torch._dynamo.reset()
    torch.manual_seed(0)
    d, depth, h = anchor.CFG["XL"]
    model = anchor.DiT(d, depth, h, sprint=not args.dense).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fwd = torch.compile(model)
    x = torch.randn(batch, 4, 32, 32, device=dev)
    t = torch.rand(batch, device=dev) * 1000
    y = torch.randint(0, 1000, (batch,), device=dev)
    tgt = torch.randn(batch, 256, 16, device=dev)

    def step():  # the anchor's step, as in its main()
        with torch.autocast("cuda", torch.bfloat16):
            loss = F.mse_loss(fwd(x, t, y).float(), tgt)
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    step_ms = anchor.time_it(step, args.steps, 2)
    host, done = [], []
    for _ in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        host.append((t1 - t0) * 1e3)
        done.append((time.perf_counter() - t0) * 1e3)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    intervals = device_intervals(prof)
    busy = sum(e - s for s, e, _ in intervals) / 1000 / 5
    gaps = gap_report(prof, 5, top=4)
    kinds, longest = kernel_table(intervals, 5)
    row = dict(batch=batch, model="dense" if args.dense else "sprint", step_ms=round(step_ms, 2),
               host_queue_ms=round(statistics.median(host), 2), host_to_done_ms=round(statistics.median(done), 2),
               kernels_busy_ms=round(busy, 2), kernels_per_step=len(intervals) // 5, profile=gaps,
               kernels_ms_by_kind=kinds, longest_kernels_ms=longest)
    print(json.dumps({k: v for k, v in row.items() if k != "longest_kernels_ms"}), flush=True)
    rows.append(row)
    del model, opt, fwd
    torch.cuda.empty_cache()
if args.json:
    json.dump(rows, open(args.json, "w"), indent=1)
