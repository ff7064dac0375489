"""Where `sprintc train`'s step time goes beyond the captured step: torch.profiler over 5 routed steps after
the capture (steps 38-42 of the first stage), kernels grouped by name, and the GPU's busy time per step
against the step's wall time. Run on the device (the piece trainprof of scripts/gpu_suite.sh h3):
    python3 scripts/gpu_train_profile.py SPEC OUT_DIR TABLE.txt"""
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile, schedule

import sprintc.train as T
from gpu_gaps import gap_report

spec_path, out_dir, table_path = sys.argv[1:4]
ACTIVE = 5
prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=schedule(wait=35, warmup=3, active=ACTIVE, repeat=1))
marks = []
logged = T.Logger.step


def step(self, *args, **kw):  # the loop calls Logger.step once per step: advance the profiler's schedule there
    logged(self, *args, **kw)
    marks.append(time.perf_counter())
    prof.step()


T.Logger.step = step
prof.start()
T.train(spec_path, out_dir, progress=False)
prof.stop()
kernels = {}
for e in prof.events():
    # the step ranges (ProfilerStep#N) are on the GPU's timeline too: they are not kernels
    if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0 and not e.name.startswith("ProfilerStep"):
        k = kernels.setdefault(e.name, [0, 0.0])
        k[0] += 1
        k[1] += e.device_time_total / 1000  # ms
busy = sum(v[1] for v in kernels.values()) / ACTIVE
wall = (marks[38 + ACTIVE - 1] - marks[38 - 1]) / ACTIVE * 1000
lines = [f"{ACTIVE} routed steps (38-42): wall {wall:.2f} ms / step (host clock at each step's log call), "
         f"GPU kernels {busy:.2f} ms / step"]
for name, (n, ms) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:60]:
    lines.append(f"{ms / ACTIVE:9.3f} ms/step {n // ACTIVE:6d} calls/step  {name[:150]}")
lines += gap_report(prof, ACTIVE)
open(table_path, "w").write("\n".join(lines) + "\n")
print("\n".join(lines[:12] + lines[-13:]))
