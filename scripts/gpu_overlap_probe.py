"""How much of the optimizer step could hide behind the next step's forward (session Q's probe, one GPU).

    python3 scripts/gpu_overlap_probe.py specs/sit_xl_sprint.yaml --batch 128,64 --json out.json

The routed XL training step, captured in a CUDA graph as `sprintc bench` captures it, in three arms:
- shipped: zero_grad, forward, backward, MasterAdamW.clip_and_step (clip norm + AdamW) on one stream;
- no_opt: zero_grad, forward, backward (the floor: the step without its optimizer);
- overlap: the clip norm and AdamW on a second stream, concurrent with the forward, then the backward. The optimizer
  reads stand-in gradients (zeros, allocated once) and the forward waits for none of its updates, so this arm's
  numbers are not a training step's: its time is the most a deferred update could save (overlap_lowprio: the same
  with the forward's stream at a higher priority).
Arms alternate, each captured afresh, twice per batch; the median ms of `--steps` replays each.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from sprintc.bench import Bench, _loss_fn, _make_opt, _set_routing, _train_step
from sprintc.spec import load_spec
from sprintc.targets_api import CudaGraphStep, resolve_target


def replay_ms(fn, steps):
    """The median ms of `steps` calls of fn after 3 more, each timed by CUDA events (scripts/gpu_sliced_overlap_probe.py
    uses it too)."""
    times = []
    for i in range(3 + steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--batch", default="128,64")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = torch.device("cuda")
    spec = load_spec(args.spec)
    target = resolve_target(spec.target, name="inductor")
    bench = Bench(spec, target, dev, steps=args.steps, warmup=3)
    model = bench._model("inductor")
    model.train()
    _set_routing(model, True)
    opt = _make_opt(model, spec, dev, bench.master, capturable=True)
    low = getattr(opt, "low", None)
    if low is None:
        sys.exit("the probe needs MasterAdamW (train.master_weights with bf16)")
    stand_in = [torch.zeros_like(p) for p in low]
    params = list(model.parameters())
    max_norm = spec.train.grad_clip
    gen = model.sprint.generator
    gens = [gen] if gen is not None and gen.device.type == "cuda" else []  # as sprintc bench registers it
    opt_stream = torch.cuda.Stream(dev)

    def shipped(b):
        return _train_step(model, opt, (b["x"], b["t"], b.get("y"), b["target"]), max_norm, "fused").detach()

    def no_opt(b):
        opt.zero_grad(set_to_none=True)
        loss = _loss_fn(model, b["x"], b["t"], b.get("y"), b["target"])
        loss.backward()
        return loss.detach()

    def overlap(b):
        for p in params:
            p.grad = None
        for p, g in zip(low, stand_in):
            p.grad = g
        main_stream = torch.cuda.current_stream()
        opt_stream.wait_stream(main_stream)
        with torch.cuda.stream(opt_stream):
            opt.clip_and_step(max_norm)
        for p in params:
            p.grad = None
        loss = _loss_fn(model, b["x"], b["t"], b.get("y"), b["target"])
        main_stream.wait_stream(opt_stream)
        loss.backward()
        return loss.detach()

    arms = {"shipped": (shipped, None), "no_opt": (no_opt, None), "overlap": (overlap, None),
            "overlap_lowprio": (overlap, "high")}
    rows = []
    for B in [int(x) for x in args.batch.split(",")]:
        x, t, y, tgt = bench._data(B)
        batch = {"x": x, "t": t, "y": y, "target": tgt}
        for r in range(args.rounds):
            for name, (fn, prio) in arms.items():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
                stream = torch.cuda.Stream(dev, priority=-1) if prio == "high" else None
                row = {"batch": B, "arm": name, "round": r}
                try:
                    step = CudaGraphStep(fn, generators=gens, optimizer=opt, stream=stream)
                    for _ in range(step.warmup + 1):
                        step(batch)
                    torch.cuda.synchronize()
                    ms = replay_ms(lambda: step(batch), args.steps)
                    row.update(ms=round(ms, 2), img_s=round(B / ms * 1e3, 1),
                               peak_gb=round(torch.cuda.max_memory_allocated(dev) / 2**30, 2))
                    step.release()
                except Exception as e:  # noqa: BLE001 - an arm that fails must not lose the others
                    row["error"] = f"{type(e).__name__}: {e}"[:400]
                print(json.dumps(row), flush=True)
                rows.append(row)
                step = None
                for p in params:
                    p.grad = None
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "rows": rows}, f, indent=1)
    for B in sorted({r["batch"] for r in rows}, reverse=True):
        for name in arms:
            ms = [r["ms"] for r in rows if r["batch"] == B and r["arm"] == name and "ms" in r]
            print(f"batch {B} {name:16s} " + " ".join(f"{m:.2f}" for m in ms))


if __name__ == "__main__":
    main()
