"""`sprintc sample SPEC --ckpt CKPT`: images from a checkpoint with CFG or path-drop guidance.

Writes OUT/grid.png, OUT/images/NNNNNN_cK.png (one per image), OUT/samples_NxHxWx3.npz (the ADM evaluator's
layout: arr_0 uint8 (N, H, W, 3), arr_1 labels) and OUT/sample.json (the settings). For latent specs
(channels other than 1 or 3) only OUT/latents.npz (arr_0 float32 (N, C, H, W), arr_1 labels) is written:
raw latents are not images and no VAE is available offline. Batch b is sampled with a generator seeded
by (seed, b), so the same --seed and --batch give the same images.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

from sprintc.cli import target_name
from sprintc.errors import CheckpointError, SprintcError
from sprintc.spec import TARGETS
from sprintc.targets_api import resolve_device


def add_sample_arguments(p):
    p.add_argument("spec", help="spec file or preset name (the model the checkpoint holds)")
    p.add_argument("--ckpt", required=True, help="checkpoint: a run folder, a checkpoints/ or step_N folder, or a .safetensors/.pt weights file")
    add_sampling_options(p)
    p.add_argument("--out", default="samples", help="output folder (default: samples)")


def add_sampling_options(p):
    """The options that pick what to sample and how (shared with `sprintc eval --ckpt`)."""
    from sprintc.diffusion import GUIDANCES, SAMPLERS

    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--classes", default=None, help="comma-separated class indices, cycled over the images (default: all classes)")
    p.add_argument("--guidance", choices=GUIDANCES, default=None, help="default: the spec's sample.guidance")
    p.add_argument("--scale", type=float, default=None, help="guidance scale w (1 = no guidance); default: the spec's")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (model evaluations per image without guidance; heun: 2 per step)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: the spec's sample.sampler")
    p.add_argument("--interval", default=None, help="guidance interval LOW,HIGH in t (default: the spec's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=64, help="images per model batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--target", type=target_name, choices=["spec", *TARGETS], default="spec",
                   help="lower the model through this target (default: the spec's target:)")
    p.add_argument("--dtype", choices=["spec", "float32", "bfloat16", "float16"], default="spec",
                   help="compute dtype (default: the spec's target.dtype)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")


# ------------------------------------------------------------------------------------------ helpers
def parse_floats(text: str, what: str, count: int) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise SprintcError(f"{what} {text!r}: expected {count} comma-separated numbers") from None
    if len(vals) != count:
        raise SprintcError(f"{what} {text!r}: expected {count} comma-separated numbers, got {len(vals)}")
    return vals


def parse_classes(text: str | None, num_classes: int) -> list[int] | None:
    """The class list of --classes, checked against the model; None for an unconditional model."""
    if num_classes == 0:
        if text:
            raise SprintcError(f"--classes {text}: the model is unconditional (model.num_classes: 0); drop --classes")
        return None
    if text is None:
        return list(range(num_classes))
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise SprintcError(f"--classes {text!r}: expected comma-separated class indices such as 1,2,3") from None
    if not classes:
        raise SprintcError("--classes: empty; give comma-separated class indices such as 1,2,3")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise SprintcError(f"--classes: class index {bad[0]} is out of range; the model has classes 0..{num_classes - 1}")
    return classes


def load_model(spec, ckpt, device="cpu", ema: bool = True) -> torch.nn.Module:
    """The spec's model with the weights of `ckpt`: a sprintc checkpoint folder (sprintc.checkpoint), or a
    single .safetensors / .pt state dict (sprintc's layout or the reference SPRINT layout)."""
    from sprintc import checkpoint

    path = Path(ckpt)
    if path.is_dir() or checkpoint.is_newest_alias(path):  # a run / checkpoint folder
        stored = checkpoint.load(path, parts=()).spec
        diff = checkpoint.spec_differences(stored, spec)
        if diff:
            warn(f"the spec differs from the one the checkpoint was trained with ({'; '.join(diff[:4])})")
        return checkpoint.load_for_inference(path, spec=spec, device=device, ema=ema)
    if not path.exists():
        raise CheckpointError(f"--ckpt {ckpt}: no such file or folder")
    from sprintc.compiler import build
    from sprintc.reference import _STAGE, load_reference, read_state

    model = build(spec)
    state = read_state(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    if any(_STAGE.match(k) for k in state):
        load_reference(model, state)
    else:
        from sprintc.checkpoint import check_state_dict

        check_state_dict(model, state, path)
        model.load_state_dict(state)
    return model.to(device).eval()


def lower_for_sampling(model, spec, device, target="spec", dtype="spec"):
    """The model lowered through the spec's target (or --target / --dtype), and a `step_for(kind, batch)`
    that captures each fixed-shape guided step in a CUDA graph on CUDA (target.cuda_graphs), else None."""
    from sprintc.targets_api import lower_sampling_step, prepare_inference, resolve_target

    over = {k: v for k, v in (("name", target), ("dtype", dtype)) if v != "spec"}
    tgt = resolve_target(spec.target, **over)
    net = prepare_inference(model, tgt, device=device, copy_model=False)
    if not (device.type == "cuda" and tgt.cuda_graphs):
        return net, None
    steps = {}

    def step_for(kind, batch):
        if (kind, batch) not in steps:  # one capture per guidance kind and batch size
            steps[kind, batch] = lower_sampling_step(net, tgt, batch=batch, guidance=kind, device=device, copy_model=False)
        return steps[kind, batch]

    return net, step_for


def warn(msg: str):
    print(f"sprintc: warning: {msg}", file=sys.stderr)


def labels_for(n: int, classes: list[int] | None) -> torch.Tensor | None:
    return None if classes is None else torch.tensor([classes[i % len(classes)] for i in range(n)])


def generate(model, spec, labels: torch.Tensor | None, n: int, *, batch: int, seed: int, progress=None, stats=None,
             step_for=None, **opts):
    """n samples in batches of `batch`; batch b uses a generator seeded (seed, b). `progress(steps, images)`
    is called after every sampler step with the images finished so far."""
    from sprintc.diffusion import sample

    device = next(model.parameters()).device
    m = spec.model
    out = []
    for b, start in enumerate(range(0, n, batch)):
        k = min(batch, n - start)
        g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
        noise = None
        if labels is None:  # unconditional: the noise fixes the batch size
            shape = (k, m.input.channels, *((m.input.frames,) if m.input.frames else ()), m.input.size, m.input.size)
            noise = torch.randn(shape, generator=g, device=device, dtype=torch.float64)
        cb = (lambda i, total, done=start, k=k: progress(1, done + (k if i == total else 0))) if progress else None
        s = {}
        x = sample(model, spec, None if labels is None else labels[start : start + k], generator=g, noise=noise,
                   progress=cb, stats=s, step_for=step_for, **opts)
        if stats is not None:
            for key, v in s.items():
                stats[key] = stats.get(key, 0) + v
        out.append(x.cpu())
    return torch.cat(out)


def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(), transient=False)


def sample_with_progress(model, spec, labels, n, *, batch, seed, stats=None, step_for=None, **opts):
    steps_per_batch = opts["steps"]
    batches = math.ceil(n / batch)
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("sampling", total=batches * steps_per_batch, rate="")

        def on_step(dsteps, images_done):
            el = time.perf_counter() - t0
            bar.update(task, advance=dsteps, rate=f"{images_done / el:.2f} img/s" if images_done else "")

        x = generate(model, spec, labels, n, batch=batch, seed=seed, progress=on_step, stats=stats, step_for=step_for, **opts)
    return x, time.perf_counter() - t0


def write_outputs(x: torch.Tensor, labels, out: Path, spec) -> dict[str, str]:
    from sprintc.images import save_grid, save_npz, save_pngs, to_rgb, to_uint8

    out.mkdir(parents=True, exist_ok=True)
    lab = None if labels is None else labels.numpy()
    if x.shape[1] not in (1, 3) or x.dim() != 4:
        import numpy as np

        path = out / "latents.npz"
        np.savez(path, x.numpy().astype("float32"), *([lab] if lab is not None else []))
        return {"latents": str(path)}
    u8 = to_uint8(x.clamp(-1, 1))
    n, h, w = u8.shape[:3]
    ncls = spec.model.num_classes
    nrow = ncls if 0 < ncls <= 16 and n >= ncls else None  # one column per class when labels cycle
    files = {"grid": str(save_grid(x.clamp(-1, 1), out / "grid.png", nrow=nrow, scale=max(1, 64 // h)))}
    save_pngs(x.clamp(-1, 1), out / "images", labels=lab)
    files["images"] = str(out / "images")
    files["npz"] = str(save_npz(out / f"samples_{n}x{h}x{w}x3.npz", to_rgb(u8), lab))
    return files


# ------------------------------------------------------------------------------------------ command
def prepare(args, spec):
    """Check the sampling options against the spec, load and lower the model; returns
    (model, labels, opts, device, step_for)."""
    from sprintc.diffusion import check_guidance, resolve

    if args.n < 1:
        raise SprintcError(f"--n {args.n}: give at least 1 image")
    if args.batch < 1:
        raise SprintcError(f"--batch {args.batch}: must be at least 1")
    interval = parse_floats(args.interval, "--interval", 2) if args.interval else None
    guidance, scale, steps, sampler, interval = resolve(spec, args.guidance, args.scale, args.steps, args.sampler, interval)
    classes = parse_classes(args.classes, spec.model.num_classes)
    if guidance != "none" and scale != 1 and spec.model.num_classes and spec.model.class_dropout == 0:
        warn(f"guidance {guidance} with scale {scale}, but the model was trained without label dropout "
             "(model.class_dropout: 0): its null-label predictions were never trained, so guidance will likely hurt; "
             "use --guidance none or retrain with class_dropout > 0")
    device = resolve_device(None, args.device)
    model = load_model(spec, args.ckpt, device=device, ema=not args.no_ema)
    check_guidance(model, spec, guidance, scale)
    model, step_for = lower_for_sampling(model, spec, device, args.target, args.dtype)
    opts = dict(guidance=guidance, scale=scale, steps=steps, sampler=sampler, interval=interval)
    return model, labels_for(args.n, classes), opts, device, step_for


def run_sample(args) -> int:
    from sprintc.spec import load_spec

    spec = load_spec(args.spec)
    model, labels, opts, device, step_for = prepare(args, spec)
    stats = {}
    x, seconds = sample_with_progress(model, spec, labels, args.n, batch=args.batch, seed=args.seed, stats=stats,
                                      step_for=step_for, **opts)
    out = Path(args.out)
    files = write_outputs(x, labels, out, spec)
    record = {"spec": spec.name, "ckpt": str(args.ckpt), "ema": not args.no_ema, "n": args.n, "batch": args.batch,
              "seed": args.seed, "classes": None if labels is None else sorted(set(labels.tolist())), **opts,
              "interval": list(opts["interval"]), "model_rows": stats, "seconds": round(seconds, 3),
              "device": str(device), "target": model.__dict__["_sprintc_lowering"].target.model_dump(),
              "cuda_graphs": step_for is not None, "files": files}
    (out / "sample.json").write_text(json.dumps(record, indent=1))
    lo, hi = opts["interval"]
    print(f"sampled {args.n} images in {seconds:.1f}s ({args.n / seconds:.2f} img/s) with {opts['sampler']}, "
          f"{opts['steps']} steps, guidance {opts['guidance']} x{opts['scale']:g} on [{lo:g}, {hi:g}]")
    if "latents" in files:
        print(f"wrote {files['latents']}: raw latents (N, C, H, W), not images; decode them with the VAE the latents "
              "came from (none is available offline), then evaluate")
    else:
        print(f"wrote {files['grid']}, {args.n} PNGs in {files['images']}, {files['npz']}")
    return 0
