#!/usr/bin/env python
"""Quality evidence on the bundled digits, in one command:

    python scripts/quality_digits.py --out docs/quality            # the CPU preset (~30-40 min on 2 cores)
    python scripts/quality_digits.py --out /tmp/q --preset smoke   # a 1-minute run of the whole pipeline

It trains small pixel-space SiTs on scikit-learn's digits (16x16, patch 2: 64 tokens) with sprintc.train:
  (a) SPRINT two-stage (routed pretraining, then full-token fine-tuning) vs dense training at equal
      training FLOPs, FD measured at checkpoints along the way (x = cumulative training FLOPs);
  (b) PDG vs CFG on the final models over guidance scales (x = sampling FLOPs per image);
  (c) ablations at the same FLOP budget: drop 0.5 / 0.75 / 0.875, structured vs random tokens,
      concat_linear fusion vs none, path drop 0.1 vs 0.
FD is sprintc eval's digits FD (64-d features of a small CNN trained on the digits) against all 1,797 real
digits, at a fixed number of samples. Training FLOPs are counted with torch's FlopCounterMode on the
actual forward (routed or dense) x 3 for forward + backward. Writes OUT/results.json, OUT/results.md
(the tables), OUT/*.png (plots, sample grids) and a folder of runs (--runs, default runs/quality_digits/PRESET, reused when rerun).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml

try:
    import sprintc.compiler  # noqa: F401  (pip install -e . puts sprintc and sprintc.passes on the path)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PRESETS = {
    # width 64, depth 8 (2 dense + 4 routed + 2 dense), batch 32; Euler sampling for FD
    "cpu": dict(width=64, depth=8, heads=4, batch=32, lr=1e-3, dense_steps=600, finetune=0.15, seeds=(0, 1),
                points=3, ckpt_every=25, n_eval=400, eval_steps=12, scales=(1.5, 2.0, 3.0), ablation_scale=2.0,
                workers=2, threads=1, ema=0.995),
    # width 128 on one GPU: 6 runs at a time (launch-bound tiny kernels), all 1,797 digits' worth of samples
    "gpu": dict(width=128, depth=8, heads=4, batch=64, lr=1e-3, dense_steps=2500, finetune=0.15, seeds=(0, 1, 2),
                points=4, ckpt_every=50, n_eval=1797, eval_steps=30, scales=(1.5, 2.0, 3.0, 4.0),
                ablation_scale=2.0, workers=6, threads=2, ema=0.999),
    "smoke": dict(width=32, depth=4, heads=2, batch=16, lr=1e-3, dense_steps=24, finetune=0.25, seeds=(0,),
                  points=2, ckpt_every=4, n_eval=40, eval_steps=3, scales=(2.0,), ablation_scale=2.0,
                  workers=2, threads=1, ema=0.9),
}

# SPRINT variants: (name, passes overrides). "sprint" is the reference recipe at this scale.
VARIANTS = {
    "sprint": dict(drop=0.75, sampler="structured", fuse="concat_linear", p=0.1),
    "drop0.5": dict(drop=0.5, sampler="structured", fuse="concat_linear", p=0.1),
    "drop0.875": dict(drop=0.875, sampler="structured", fuse="concat_linear", p=0.1),
    "random": dict(drop=0.75, sampler="random", fuse="concat_linear", p=0.1),
    "nofuse": dict(drop=0.75, sampler="structured", fuse="none", p=0.1),
    "pathdrop0": dict(drop=0.75, sampler="structured", fuse="concat_linear", p=0.0),
}


# ------------------------------------------------------------------------------------------ specs
def make_spec(cfg, variant: str | None, seed: int, steps: tuple[int, int]):
    """A dense spec (variant None: steps = (dense steps, 0)) or a SPRINT variant (routed, fine-tune)."""
    from sprintc.spec import load_spec

    ema = {"decay": cfg["ema"], "warmup": 50}
    common = {"model": {"width": cfg["width"], "depth": cfg["depth"], "heads": cfg["heads"]},
              "sample": {"sampler": "euler", "steps": cfg["eval_steps"], "guidance": "none", "scale": 1.0},
              "target": {"name": "eager", "device": "auto", "dtype": "float32"}}
    train = {"seed": seed, "ema": ema, "log_every": 10_000, "checkpoint_every": cfg["ckpt_every"], "keep_checkpoints": 10_000,
             "sample_every": 0}
    warm = max(1, min(50, steps[0] // 5))
    # both runs end with the same lower-lr stage, so the only difference is routing in the first stage
    second = {"steps": steps[1], "batch": cfg["batch"], "lr": cfg["lr"] / 2, "warmup": max(1, steps[1] // 10), "routing": False}
    if variant is None:
        train["stages"] = [{"name": "dense", "steps": steps[0], "batch": cfg["batch"], "lr": cfg["lr"], "warmup": warm, "routing": False},
                           {"name": "dense_lowlr", **second}]
        return load_spec({"extends": "digits", "name": "dense", **common, "train": train})
    v = VARIANTS[variant]
    enc = dec = 2 if cfg["depth"] >= 6 else 1
    passes = [{"name": "partition", "encoder": enc, "decoder": dec},
              {"name": "route", "sampler": v["sampler"], "drop": v["drop"]},
              {"name": "fuse", "kind": v["fuse"]},
              {"name": "path_drop", "p": v["p"]},
              {"name": "pdg"}]
    train["stages"] = [{"name": "pretrain", "steps": steps[0], "batch": cfg["batch"], "lr": cfg["lr"], "warmup": warm, "routing": True},
                       {"name": "finetune", **second}]
    return load_spec({"extends": "digits_sprint", "name": variant, **common, "passes": passes, "train": train})


def flops_per_image(spec) -> dict:
    """Forward FLOPs per image: dense (eval), routed (training draw of tokens), and the PDG graph per
    [cond; uncond] pair, counted by FlopCounterMode on the built model (batch 4, divided)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sprintc.compiler import build, example_inputs

    net = build(spec)
    x, t, y = example_inputs(spec, 4)
    out = {}

    def count(fn, *a, **k):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            fn(*a, **k)
        return fc.get_total_flops()

    net.eval()
    out["dense"] = count(net, x, t, y) / 4
    net.train()
    out["routed"] = count(net, x, t, y) / 4 if getattr(net, "sprint", None) is not None else out["dense"]
    if hasattr(net, "forward_guidance"):
        net.eval()
        out["pdg_pair"] = count(net.forward_guidance, torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y])) / 4
    return out


def schedule(cfg, fl_dense: float, fl_routed: float) -> tuple[int, int]:
    """(routed steps, fine-tune steps) of a SPRINT run with the dense run's training FLOPs: the fine-tune
    takes `finetune` of the budget (the dense run's last stage, at the same half lr, has the same length),
    the routed stage the rest at its lower cost per step."""
    S = cfg["dense_steps"]
    ft = max(1, round(cfg["finetune"] * S))
    return round((S - ft) * fl_dense / fl_routed), ft


# ------------------------------------------------------------------------------------------ jobs
def _setup_worker(threads: int):
    import torch

    torch.set_num_threads(threads)


def train_flops(spec, fl, step: int) -> float:
    """Cumulative training FLOPs after `step` steps (3x forward per image, routed in routed stages)."""
    total, s = 0.0, 0
    for st in spec.train.stages:
        k = max(0, min(step, s + st.steps) - s)
        total += 3 * k * st.batch * (fl["routed"] if st.routing else fl["dense"])
        s += st.steps
    return total


def curve_steps(spec, fl, points: int) -> list[int]:
    """The checkpoint steps closest to 1/points, 2/points, ... of the run's training FLOPs (the last is the end)."""
    total_steps = sum(st.steps for st in spec.train.stages)
    every = spec.train.checkpoint_every
    budget = train_flops(spec, fl, total_steps)
    cands = sorted(set(range(every, total_steps, every)) | {total_steps})
    out = []
    for k in range(1, points + 1):
        target = budget * k / points
        out.append(min(cands, key=lambda s: abs(train_flops(spec, fl, s) - target)))
    return sorted(set(out))


def evaluate(model, spec, fd, cfg, *, guidance="none", scale=1.0, seed=0) -> dict:
    import torch

    from sprintc.images import to_rgb, to_uint8
    from sprintc.sample import generate

    n = cfg["n_eval"]
    labels = torch.arange(n) % 10
    t0 = time.perf_counter()
    x = generate(model, spec, labels, n, batch=256, seed=seed, guidance=guidance, scale=scale,
                 steps=cfg["eval_steps"], sampler="euler", interval=(0.0, 1.0))
    r = fd.score(to_rgb(to_uint8(x.clamp(-1, 1))), labels.numpy())
    r["seconds"] = round(time.perf_counter() - t0, 2)
    return r


def training_identity(d: dict) -> dict:
    """What decides the trained weights in a spec dump (not logging, checkpoint or sample-grid settings)."""
    t = d.get("train") or {}
    keep = ("objective", "time_sampling", "stages", "betas", "weight_decay", "eps", "grad_clip", "ema", "data", "seed")
    return {"model": d.get("model"), "passes": d.get("passes"), "train": {k: t.get(k) for k in keep}}


def run_job(job: dict) -> dict:
    """Train one run (or reuse it), then evaluate its checkpoints as `job['evals']` asks."""
    from sprintc import checkpoint as ckpt
    from sprintc.evaluate import DigitsFD
    from sprintc.spec import dump_spec, load_spec
    from sprintc.train import train

    cfg, out = job["cfg"], Path(job["out"])
    spec = load_spec(job["spec"])
    lock = out / "spec.lock.yaml"  # reuse a finished run only if it trained this model the same way
    same = lock.is_file() and training_identity(yaml.safe_load(lock.read_text())) == training_identity(yaml.safe_load(dump_spec(spec)))
    done = out / "result.json"
    if same and done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("key") == job["key"]:
            return prev
    t0 = time.perf_counter()
    if not same or not (out / "checkpoints" / f"step_{job['total']:06d}").exists():
        if out.exists():
            import shutil

            shutil.rmtree(out)
        summary = train(spec, out, progress=False, device=cfg["device"])
        train_s = summary["wall_s"]
    else:
        train_s = None
    fd = DigitsFD(cfg["cache"])
    res = {"key": job["key"], "name": job["name"], "variant": job["variant"], "seed": job["seed"], "train_s": train_s,
           "flops": job["flops"], "stages": [st.model_dump() for st in spec.train.stages], "curve": [], "final": {}}
    device = cfg["device"]
    for step in job["curve"]:
        model = ckpt.load_for_inference(out / "checkpoints" / f"step_{step:06d}", spec=spec, device=device)
        r = evaluate(model, spec, fd, cfg)
        res["curve"].append({"step": step, "train_flops": train_flops(spec, job["flops"], step), **r})
    model = ckpt.load_for_inference(out / "checkpoints" / f"step_{job['total']:06d}", spec=spec, device=device)
    for label, g, w, seed in job["evals"]:
        res["final"][label] = {"guidance": g, "scale": w, "seed": seed, **evaluate(model, spec, fd, cfg, guidance=g, scale=w, seed=seed)}
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    done.write_text(json.dumps(res, indent=1))
    return res


# ------------------------------------------------------------------------------------------ report
def real_floor(cfg, fd, reps=5) -> dict:
    """FD of n_eval real digits drawn with replacement (a bootstrap) against all of them: roughly what a
    perfect sampler would score at this sample size, and its spread."""
    import numpy as np
    import torch

    from sprintc.evaluate import real_digits

    x, _ = real_digits()
    vals = []
    for r in range(reps):
        idx = torch.randint(0, len(x), (cfg["n_eval"],), generator=torch.Generator().manual_seed(100 + r))
        vals.append(fd.score(x[idx])["fd"])
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)), "values": vals}


def mean_sd(vals):
    import numpy as np

    vals = [v for v in vals if v is not None]
    if not vals:
        return float("nan"), float("nan")
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")


def fmt(m, s=None):
    return f"{m:.2f}" if s is None or s != s else f"{m:.2f} ± {s:.2f}"


def save_figure(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plots(results, cfg, out: Path, floor):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    files = {}
    # (a) FD vs training FLOPs
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, color in (("dense", "tab:gray"), ("sprint", "tab:red")):
        runs = [r for r in results if r["variant"] == name]
        for r in runs:
            ax.plot([c["train_flops"] / 1e12 for c in r["curve"]], [c["fd"] for c in r["curve"]], "o-", color=color, alpha=0.35, lw=1)
        if runs:
            xs = np.mean([[c["train_flops"] / 1e12 for c in r["curve"]] for r in runs], 0)
            ys = np.array([[c["fd"] for c in r["curve"]] for r in runs])
            ax.errorbar(xs, ys.mean(0), yerr=ys.std(0, ddof=1) if len(runs) > 1 else None, fmt="s-", color=color, lw=2,
                        capsize=3, label=f"{'SPRINT (routed, then fine-tune)' if name == 'sprint' else 'dense'} (mean of {len(runs)} seeds)")
    ax.axhline(floor["mean"], ls=":", color="k", label=f"real digits, {cfg['n_eval']} drawn (floor)")
    ax.set_xlabel("training compute (TFLOPs)")
    ax.set_ylabel(f"FD (digits features, {cfg['n_eval']} samples)")
    ax.set_title("(a) equal training compute: SPRINT vs dense, no guidance")
    ax.legend(fontsize=8)
    files["a"] = save_figure(plt, fig, out / "fd_vs_train_flops.png")
    # (b) PDG vs CFG on the SPRINT finals (and CFG on dense): FD against the guidance scale (left) and
    # against sampling FLOPs per image (right; every scale of one method costs the same, dashed lines join
    # CFG and PDG at equal scale)
    fig, (axl, ax) = plt.subplots(1, 2, figsize=(10, 4))
    pts_by = {}
    for variant, guid, color, mark in (("sprint", "pdg", "tab:red", "o"), ("sprint", "cfg", "tab:blue", "s"), ("dense", "cfg", "tab:gray", "^")):
        runs = [r for r in results if r["variant"] == variant]
        pts = []
        for w in (1.0, *cfg["scales"]):
            key = "none" if w == 1.0 else f"{guid}{w:g}"
            vals = [r["final"][key]["fd"] for r in runs if key in r["final"]]
            if vals:
                fl = sampling_flops(runs[0]["flops"], "none" if w == 1.0 else guid, cfg["eval_steps"])
                pts.append((fl / 1e9, *mean_sd(vals), w))
        if not pts:
            continue
        pts_by[variant, guid] = pts
        xs, ms, ss, ws = zip(*pts)
        yerr = [0 if s_ != s_ else s_ for s_ in ss]
        lab = f"{variant} {guid.upper()} (w=1: no guidance)"
        axl.errorbar(ws, ms, yerr=yerr, fmt=mark + "-", color=color, capsize=3, label=lab)
        ax.errorbar(xs[1:], ms[1:], yerr=yerr[1:], fmt=mark, color=color, capsize=3, label=f"{variant} {guid.upper()}")
        ax.errorbar(xs[:1], ms[:1], yerr=yerr[:1], fmt=mark, mfc="white", color=color, capsize=3)
        for x_, m_, w_ in zip(xs, ms, ws):
            ax.annotate(f"w={w_:g}", (x_, m_), textcoords="offset points", xytext=(4, 2), fontsize=7, color=color)
    a, b = pts_by.get(("sprint", "cfg"), []), pts_by.get(("sprint", "pdg"), [])
    for pa, pb in zip(a[1:], b[1:]):
        ax.plot([pa[0], pb[0]], [pa[1], pb[1]], ":", color="k", lw=0.8)
    axl.set_xlabel("guidance scale w")
    axl.set_ylabel(f"FD ({cfg['n_eval']} samples)")
    axl.set_title(f"(b) PDG vs CFG, Euler {cfg['eval_steps']} steps")
    axl.legend(fontsize=8)
    ax.set_xlabel("sampling compute per image (GFLOPs; hollow: no guidance)")
    ax.set_ylabel(f"FD ({cfg['n_eval']} samples)")
    ax.set_title("the same points against sampling compute")
    ax.legend(fontsize=8)
    files["b"] = save_figure(plt, fig, out / "fd_vs_sampling_flops.png")
    # (c) ablations: bars of FD without guidance and with PDG (when any ablation ran)
    names = [n for n in ["sprint", "drop0.5", "drop0.875", "random", "nofuse", "pathdrop0", "dense"]
             if any(r["variant"] == n for r in results)]
    if not set(names) - {"sprint", "dense"}:
        return files
    fig, ax = plt.subplots(figsize=(7, 3.8))
    w_ab = cfg["ablation_scale"]
    for j, (key, color, lab) in enumerate((("none", "tab:gray", "no guidance"), (f"pdg{w_ab:g}", "tab:red", f"PDG w={w_ab:g}"),
                                           (f"cfg{w_ab:g}", "tab:blue", f"CFG w={w_ab:g}"))):
        ms, ss = [], []
        for n in names:
            m, s = mean_sd([r["final"][key]["fd"] for r in results if r["variant"] == n and key in r["final"]])
            ms.append(m)
            ss.append(s)
        ax.bar(np.arange(len(names)) + (j - 1) * 0.27, ms, 0.27, yerr=[0 if s != s else s for s in ss], color=color, label=lab, capsize=2)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylabel(f"FD ({cfg['n_eval']} samples)")
    ax.set_title("(c) ablations at equal training FLOPs (sprint, dense: mean ± sd over seeds)")
    ax.legend(fontsize=8)
    files["c"] = save_figure(plt, fig, out / "ablations.png")
    return files


def sampling_flops(fl: dict, guidance: str, steps: int) -> float:
    per = {"none": fl["dense"], "cfg": 2 * fl["dense"], "pdg": fl.get("pdg_pair", float("nan"))}[guidance]
    return steps * per


def grids(results, cfg, out: Path):
    """Final models, same noise: rows = 10 classes x 3 samples, per guidance."""
    import torch

    from sprintc import checkpoint as ckpt
    from sprintc.images import save_grid
    from sprintc.sample import generate
    from sprintc.spec import load_spec

    files = []
    labels = torch.arange(30) % 10
    w = cfg["ablation_scale"]
    for r in results:
        if r["seed"] != cfg["seeds"][0] or r["variant"] not in ("dense", "sprint"):
            continue
        spec = load_spec(r["spec"])
        model = ckpt.load_for_inference(Path(r["out"]) / "checkpoints" / f"step_{r['total']:06d}", spec=spec, device=cfg["device"])
        for g in ("none", "cfg", "pdg"):
            if g == "pdg" and not hasattr(model, "forward_guidance"):
                continue
            x = generate(model, spec, labels, 30, batch=30, seed=123, guidance=g, scale=1.0 if g == "none" else w,
                         steps=cfg["eval_steps"], sampler="euler", interval=(0.0, 1.0))
            p = save_grid(x.clamp(-1, 1), out / f"grid_{r['variant']}_{g}.png", nrow=10, scale=3)
            files.append(p)
    return files


def tables(results, cfg, floor, fl_by) -> str:
    w = cfg["ablation_scale"]
    L = []
    L.append(f"Real-digit floor: FD of {cfg['n_eval']} real digits drawn with replacement vs all 1,797: {fmt(floor['mean'], floor['std'])} "
             f"(5 draws). Sampling spread: FD of the same model with two sampling seeds is listed as `none` / `none@seed1`.\n")
    L.append("### (a) equal training compute\n")
    L.append("| run | seed | steps (routed + dense) | train TFLOPs | FD along training (checkpoint TFLOPs: FD) | final FD, no guidance | sampling seed 1 |")
    L.append("|---|---|---|---|---|---|---|")
    for r in results:
        if r["variant"] not in ("dense", "sprint"):
            continue
        st = r["stages"]
        routed = sum(s["steps"] for s in st if s["routing"]) if r["variant"] != "dense" else 0
        dense = sum(s["steps"] for s in st if not s["routing"]) if r["variant"] != "dense" else sum(s["steps"] for s in st)
        curve = ", ".join(f"{c['train_flops'] / 1e12:.2f}: {c['fd']:.2f}" for c in r["curve"])
        f = r["final"]
        L.append(f"| {r['variant']} | {r['seed']} | {routed} + {dense} | {r['curve'][-1]['train_flops'] / 1e12:.2f} | {curve} | "
                 f"{f['none']['fd']:.2f} | {f.get('none@seed1', {}).get('fd', float('nan')):.2f} |")
    for v in ("dense", "sprint"):
        m, s = mean_sd([r["final"]["none"]["fd"] for r in results if r["variant"] == v])
        L.append(f"\n{v}: final FD {fmt(m, s)} (mean ± sd over seeds)")
    L.append("\n### (b) PDG vs CFG (final models; mean ± sd over training seeds)\n")
    L.append("| model | guidance | scale | sampling GFLOPs / image | FD | label accuracy |")
    L.append("|---|---|---|---|---|---|")
    for v in ("sprint", "dense"):
        runs = [r for r in results if r["variant"] == v]
        if not runs:
            continue
        for g in ("none", "cfg", "pdg"):
            for sc in ((1.0,) if g == "none" else cfg["scales"]):
                key = "none" if g == "none" else f"{g}{sc:g}"
                vals = [r["final"][key] for r in runs if key in r["final"]]
                if not vals:
                    continue
                m, s = mean_sd([x["fd"] for x in vals])
                a, _ = mean_sd([x["label_accuracy"] for x in vals])
                L.append(f"| {v} | {g} | {sc:g} | {sampling_flops(runs[0]['flops'], g, cfg['eval_steps']) / 1e9:.3f} | {fmt(m, s)} | {100 * a:.1f}% |")
    L.append(f"\n### (c) ablations at equal training FLOPs (seed {cfg['seeds'][0]} unless marked; guided at w={w:g})\n")
    L.append("| variant | drop | tokens | fusion | path drop | routed + fine-tune steps | FD none | FD PDG | FD CFG | label acc. (PDG) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for v in ("sprint", "drop0.5", "drop0.875", "random", "nofuse", "pathdrop0", "dense"):
        runs = [r for r in results if r["variant"] == v]
        if not runs:
            continue
        d = VARIANTS.get(v, dict(drop=0, sampler="-", fuse="-", p=0))
        st = runs[0]["stages"]
        steps = " + ".join(str(s["steps"]) for s in st)
        cells = []
        for key in ("none", f"pdg{w:g}", f"cfg{w:g}"):
            cells.append(fmt(*mean_sd([r["final"][key]["fd"] for r in runs if key in r["final"]])) if any(key in r["final"] for r in runs) else "-")
        acc = mean_sd([r["final"][f"pdg{w:g}"]["label_accuracy"] for r in runs if f"pdg{w:g}" in r["final"]])[0]
        n = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
        L.append(f"| {v}{n} | {d['drop']} | {d['sampler']} | {d['fuse']} | {d['p']} | {steps} | {' | '.join(cells)} | "
                 f"{'-' if acc != acc else f'{100 * acc:.1f}%'} |")
    L.append("\nForward FLOPs per image (FlopCounterMode): " + "; ".join(
        f"{k}: dense {v['dense'] / 1e6:.1f} M, routed {v['routed'] / 1e6:.1f} M" + (f", PDG pair {v['pdg_pair'] / 1e6:.1f} M" if "pdg_pair" in v else "")
        for k, v in fl_by.items()))
    return "\n".join(L) + "\n"


def report_only(out: Path, cache=None):
    """Tables and plots again from a finished OUT/results.json (the floor is recomputed here)."""
    from sprintc.evaluate import DigitsFD

    data = json.loads((out / "results.json").read_text())
    cfg, results = data["cfg"], data["runs"]
    fd = DigitsFD(cache, log=print)
    floor = real_floor(cfg, fd)
    plots(results, cfg, out, floor)
    md = tables(results, cfg, floor, data["flops"])
    text = (out / "results.md").read_text() if (out / "results.md").exists() else ""
    header = text.split("Real-digit floor")[0] if "Real-digit floor" in text else ""
    (out / "results.md").write_text(header + md)
    data["floor"] = floor
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str))
    print(md)


# ------------------------------------------------------------------------------------------ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/quality")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the gpu preset is meant for cuda)")
    ap.add_argument("--workers", type=int, default=None, help="parallel runs (default: the preset's)")
    ap.add_argument("--cache", default=None, help="digits classifier cache folder (default ~/.cache/sprintc)")
    ap.add_argument("--only", type=lambda t: t.split(","), default=None,
                    help="comma-separated SPRINT variants to run besides dense (default: all: " + ",".join(VARIANTS) + ")")
    ap.add_argument("--report-only", action="store_true",
                    help="redo OUT/results.md and the plots from OUT/results.json (no training or sampling)")
    ap.add_argument("--runs", default="runs/quality_digits", help="where the training runs go (checkpoints; reused when rerun)")
    args = ap.parse_args(argv)
    cfg = dict(PRESETS[args.preset], device=args.device, cache=args.cache, preset=args.preset)
    if args.workers:
        cfg["workers"] = args.workers
    bad = [v for v in args.only or [] if v not in VARIANTS]
    if bad:
        ap.error(f"--only {bad[0]}: unknown variant; known: {', '.join(VARIANTS)}")
    out = Path(args.out)
    if args.report_only:
        return report_only(out, args.cache)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(args.runs) / args.preset
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(cfg["threads"])
    from sprintc.evaluate import DigitsFD

    fd = DigitsFD(cfg["cache"], log=print)  # trains + caches the classifier once, before the workers start
    print(f"digits classifier: held-out test accuracy {100 * fd.classifier_accuracy:.1f}%", flush=True)
    floor = real_floor(cfg, fd)

    # FLOPs per image of each variant and the equal-compute schedules
    fl_by = {"dense": flops_per_image(make_spec(cfg, None, 0, (1, 1)))}
    jobs = []
    S, w_ab, scales = cfg["dense_steps"], cfg["ablation_scale"], cfg["scales"]
    variants = [v for v in VARIANTS if not args.only or v in args.only]
    for variant in variants:
        fl_by[variant] = flops_per_image(make_spec(cfg, variant, 0, (1, 1)))
    for variant in [None, *variants]:
        name = variant or "dense"
        fl = fl_by[name]
        ft = max(1, round(cfg["finetune"] * S))
        steps = (S - ft, ft) if variant is None else schedule(cfg, fl_by["dense"]["dense"], fl["routed"])
        seeds = cfg["seeds"] if name in ("dense", "sprint") else cfg["seeds"][:1]
        for seed in seeds:
            spec = make_spec(cfg, variant, seed, steps)
            main_run = name in ("dense", "sprint")
            evals = [("none", "none", 1.0, 0)]
            if main_run:
                evals.append(("none@seed1", "none", 1.0, 1))
                for w in scales:
                    evals.append((f"cfg{w:g}", "cfg", w, 0))
                    if variant is not None:
                        evals.append((f"pdg{w:g}", "pdg", w, 0))
            else:
                evals += [(f"pdg{w_ab:g}", "pdg", w_ab, 0), (f"cfg{w_ab:g}", "cfg", w_ab, 0)]
            total = sum(steps)
            same_work = {k: v for k, v in cfg.items() if k not in ("workers", "threads", "cache")}  # not results
            key = json.dumps([same_work, name, seed, steps, evals], sort_keys=True, default=str)
            jobs.append({"name": f"{name}-s{seed}", "variant": name, "seed": seed, "cfg": cfg, "flops": fl,
                         "spec": spec.model_dump(mode="json", exclude={"extends"}), "out": str(runs_dir / f"{name}-s{seed}"),
                         "total": total, "evals": evals, "key": key,
                         "curve": curve_steps(spec, fl, cfg["points"]) if main_run else []})
    jobs.sort(key=lambda j: -len(j["evals"]) - len(j["curve"]))  # the long ones first
    print(f"{len(jobs)} runs on {cfg['workers']} worker(s) ({cfg['threads']} thread(s) each), preset {args.preset}", flush=True)
    results = []
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(cfg["workers"], mp_context=ctx, initializer=_setup_worker, initargs=(cfg["threads"],)) as pool:
        futs = {pool.submit(run_job, j): j for j in jobs}
        for f in as_completed(futs):
            j = futs[f]
            r = f.result()
            r.update(spec=j["spec"], out=j["out"], total=j["total"])
            results.append(r)
            print(f"[{time.perf_counter() - t0:6.0f}s] {j['name']}: final FD {r['final']['none']['fd']:.2f} "
                  f"(run {r['wall_s']}s)", flush=True)
    order = {n: i for i, n in enumerate(["dense", *VARIANTS])}
    results.sort(key=lambda r: (order[r["variant"]], r["seed"]))
    files = plots(results, cfg, out, floor)
    grid_files = grids(results, cfg, out)
    md = tables(results, cfg, floor, fl_by)
    wall = time.perf_counter() - t0
    header = (f"Preset `{args.preset}` on {args.device} ({torch.get_num_threads()} thread(s) in the main process, "
              f"{cfg['workers']} worker(s) x {cfg['threads']} thread(s)); total wall time {wall / 60:.1f} min. "
              f"Config: {json.dumps({k: v for k, v in cfg.items() if k not in ('cache',)})}\n\n"
              f"Digits classifier held-out test accuracy: {100 * fd.classifier_accuracy:.1f}%.\n\n")
    (out / "results.md").write_text(header + md)
    (out / "results.json").write_text(json.dumps({"cfg": cfg, "floor": floor, "flops": fl_by, "wall_s": wall,
                                                  "classifier_test_accuracy": fd.classifier_accuracy,
                                                  "runs": results}, indent=1, default=str))
    print(md)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {', '.join(str(p) for p in [*files.values(), *grid_files])}")
    print(f"total {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
