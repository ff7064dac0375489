"""The bench's captured routed training step under torch.profiler: kernels' busy time against the step's time, and
where the GPU idles between kernels (scripts/gpu_gaps.py), to set beside `sprintc train`'s loop
(scripts/gpu_train_profile.py) in one device call (session Q).

    python3 scripts/gpu_step_gaps.py specs/sit_xl_sprint.yaml OUT.txt [--batch 128] [--order KERNELS.tsv]

--order writes every device event of the profiled steps in start order (start and duration in us from the first,
the idle time before it, its name), to see what surrounds a kernel, e.g. where memsets come from (session AF).
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from gpu_gaps import device_intervals, gap_report
from sprintc.bench import Bench, _make_opt, _set_routing, _train_step
from sprintc.spec import load_spec
from sprintc.targets_api import CudaGraphStep, resolve_target

ap = argparse.ArgumentParser()
ap.add_argument("spec")
ap.add_argument("out")
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--order")
args = ap.parse_args()
dev = torch.device("cuda")
spec = load_spec(args.spec)
bench = Bench(spec, resolve_target(spec.target, name="inductor"), dev, steps=20, warmup=3)
model = bench._model("inductor")
model.train()
_set_routing(model, True)
opt = _make_opt(model, spec, dev, bench.master, capturable=True)
gen = model.sprint.generator
x, t, y, tgt = bench._data(args.batch)
batch = {"x": x, "t": t, "y": y, "target": tgt}
step = CudaGraphStep(lambda b: _train_step(model, opt, (b["x"], b["t"], b["y"], b["target"]), spec.train.grad_clip, "fused").detach(),
                     generators=[gen] if gen is not None and gen.device.type == "cuda" else [], optimizer=opt)
for _ in range(step.warmup + 6):
    step(batch)
torch.cuda.synchronize()
STEPS = 5
a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    a.record()
    for _ in range(STEPS):
        step(batch)
    b.record()
    torch.cuda.synchronize()
busy = sum(end - start for start, end, _ in device_intervals(prof)) / 1000 / STEPS
lines = [f"{STEPS} captured routed steps at batch {args.batch}: {a.elapsed_time(b) / STEPS:.2f} ms / step (events), "
         f"GPU kernels {busy:.2f} ms / step"] + gap_report(prof, STEPS)
open(args.out, "w").write("\n".join(lines) + "\n")
if args.order:
    iv = device_intervals(prof)
    rows, end = ["start_us\tdur_us\tidle_before_us\tname"], iv[0][0]
    for s, e, name in iv:
        rows.append(f"{s - iv[0][0]:.1f}\t{e - s:.1f}\t{max(0.0, s - end):.1f}\t{name[:160]}")
        end = max(end, e)
    open(args.order, "w").write("\n".join(rows) + "\n")
print("\n".join(lines))
