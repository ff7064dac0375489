"""`sprintc bench SPEC`: how fast a spec trains and samples on this machine.

Training step = forward, backward, gradient clipping (train.grad_clip) and a fused AdamW step, bf16
autocast (target.dtype), on fixed random data; the dense graph (routing off: model.sprint.routing =
False) and the routed graph (tokens dropped, path drop on), each eager, compiled (the inductor target:
regional per-block compile) and, on CUDA, compiled + the whole step captured in a CUDA graph. Sampling
step = one guided prediction on B images: CFG (the dense model on the 2B batch) vs PDG
(model.forward_guidance), eager / compiled / compiled + CUDA graph. `--parts sample250` adds a full
250-step SDE sampling of --images images (sprintc.diffusion.sample), CFG vs PDG, wall time;
`sample250g` the same loop on the CUDA-graph step.

Figures: ms per step (median over --steps after --warmup), images/s, TFLOP/s (FLOPs counted on the
block graph with FlopCounterMode; a training step = 3x its forward), MFU against a bf16 matmul peak
measured on the spot, peak memory (CUDA), the cold compile time (to the end of the first step, with
Inductor's FX graph cache hits/misses so a warm cache shows). On the CPU the spec is shrunk to a tiny
model (--size tiny) unless --size full.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sprintc.errors import SprintcError, first_line
from sprintc.spec import Spec, load_spec

PARTS = ("train", "sample", "sample250", "sample250g")
MODES = ("eager", "compiled", "cudagraph")


class BenchError(SprintcError):
    """Bad bench arguments."""


# ------------------------------------------------------------------------------------------ CLI
def add_bench_arguments(p):
    p.add_argument("spec", help="spec file or preset name (e.g. specs/sit_xl_sprint.yaml)")
    p.add_argument("--batch", default=None, help="per-device batch size(s), comma-separated (default: 128 on CUDA, 4 on the CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default: 20 on CUDA, 3 on the CPU)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (compiling) step")
    p.add_argument("--json", dest="json_path", metavar="FILE", help="write all figures as JSON (rewritten after every row)")
    p.add_argument("--device", default="auto", help="auto (CUDA when a GPU is visible), cpu, cuda or cuda:N")
    p.add_argument("--parts", default="train,sample", help=f"comma-separated, of: {', '.join(PARTS)}")
    p.add_argument("--modes", default="eager,compiled,cudagraph", help=f"comma-separated, of: {', '.join(MODES)} (cudagraph: CUDA only)")
    p.add_argument("--graphs", default="routed,dense", help="training graphs: routed, dense")
    p.add_argument("--size", choices=["auto", "tiny", "full"], default="auto", help="auto: full on CUDA, tiny on the CPU")
    p.add_argument("--mode", dest="compile_mode", default=None, help="override target.mode (default, max-autotune, ...)")
    p.add_argument("--tune", action="store_true", default=None, help="set target.tune (coordinate-descent tuning of the kernels)")
    p.add_argument("--multi-kernel", action=argparse.BooleanOptionalAction, default=None,
                   help="set / clear target.multi_kernel (Inductor's multi-kernel reductions, compiled without its cache)")
    p.add_argument("--kernels", action=argparse.BooleanOptionalAction, default=None,
                   help="set / clear target.kernels (sprintc's Triton kernels for the q/k RMSNorm + RoPE, CUDA)")
    p.add_argument("--regional", action=argparse.BooleanOptionalAction, default=None,
                   help="set / clear target.regional (--no-regional: the forward compiled as one graph; longer compile)")
    p.add_argument("--mix-order-reduction", action=argparse.BooleanOptionalAction, default=None,
                   help="set / clear target.mix_order_reduction (Inductor's mix-order reductions; off by default)")
    p.add_argument("--region-blocks", type=int, default=None, metavar="N",
                   help="set target.region_blocks (consecutive blocks compiled together as one region)")
    p.add_argument("--pdl", action=argparse.BooleanOptionalAction, default=None,
                   help="set / clear target.pdl (Inductor's programmatic dependent launch on H100-class GPUs; on by default)")
    p.add_argument("--tuned-matmuls", action=argparse.BooleanOptionalAction, default=None,
                   help="set / clear target.tuned_matmuls (each of Inductor's matmuls on the fastest cuBLASLt candidate "
                        "timed at compile time; on by default)")
    p.add_argument("--batch-modulation", action=argparse.BooleanOptionalAction, default=None,
                   help="set / clear target.batch_modulation (the blocks' adaLN modulations as one matmul; on by default)")
    p.add_argument("--master-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="set train.master_weights (bf16 weights written by the optimizer from float32 masters)")
    p.add_argument("--moments", choices=["float32", "bfloat16"], default=None,
                   help="set train.moments_dtype (AdamW's moments with master weights; bfloat16 is an opt-in, rounded "
                        "stochastically)")
    p.add_argument("--clip", choices=["fused", "standard", "both"], default="fused",
                   help="gradient clipping: folded into the fused AdamW kernel, torch's clip_grad_norm_, or both (rows for each, "
                        "compiled); rows say off when the spec's train.grad_clip is 0")
    p.add_argument("--images", type=int, default=64, help="images of the sample250 parts")
    p.add_argument("--sample-steps", type=int, default=250, help="steps of the sample250 parts")
    p.add_argument("--profile", metavar="DIR", help="write torch.profiler summaries of the compiled steps to DIR")
    p.add_argument("--inductor-config", action="append", default=[], metavar="KEY=VALUE",
                   help="set torch._inductor.config KEY (e.g. coordinate_descent_tuning=True, cpp_wrapper=True); repeatable")
    p.add_argument("--tag", default="", help="prefix of the profile file names")


def _ints(text, what):
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"{what}: expected comma-separated integers, found {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise BenchError(f"{what}: each value must be >= 1, found {text!r}")
    return vals


def _choices(text, allowed, what):
    vals = [v.strip() for v in str(text).split(",") if v.strip()]
    bad = [v for v in vals if v not in allowed]
    if bad or not vals:
        raise BenchError(f"{what}: unknown {', '.join(map(repr, bad)) or 'empty list'}; allowed: {', '.join(allowed)}")
    return vals


def run_bench(args) -> int:
    from sprintc.targets_api import MODES as TMODES, resolve_device, resolve_target

    spec = load_spec(args.spec)
    dev = resolve_device(None, args.device)
    parts = _choices(args.parts, PARTS, "--parts")
    modes = _choices(args.modes, MODES, "--modes")
    graphs = _choices(args.graphs, ("routed", "dense"), "--graphs")
    if args.compile_mode is not None and args.compile_mode not in TMODES:
        raise BenchError(f"--mode: unknown mode {args.compile_mode!r}; known: {', '.join(TMODES)}")
    if args.steps is not None and args.steps < 1:
        raise BenchError(f"--steps: {args.steps} must be >= 1")
    if args.warmup < 0:
        raise BenchError(f"--warmup: {args.warmup} must be >= 0")
    if args.images < 1 or args.sample_steps < 2:
        raise BenchError("--images must be >= 1 and --sample-steps >= 2")
    batches = _ints(args.batch, "--batch") if args.batch is not None else ([128] if dev.type == "cuda" else [4])
    steps = args.steps or (20 if dev.type == "cuda" else 3)
    tiny = args.size == "tiny" or (args.size == "auto" and dev.type == "cpu")
    target = resolve_target(spec.target, name="inductor", mode=args.compile_mode, tune=args.tune,
                            multi_kernel=args.multi_kernel, kernels=args.kernels, regional=args.regional,
                            mix_order_reduction=args.mix_order_reduction, pdl=args.pdl,
                            region_blocks=args.region_blocks, tuned_matmuls=args.tuned_matmuls,
                            batch_modulation=args.batch_modulation)
    inductor_cfg = _inductor_config(args.inductor_config)
    train_update = {k: v for k, v in (("master_weights", args.master_weights), ("moments_dtype", args.moments))
                    if v is not None}
    if train_update:
        spec = spec.model_copy(update={"train": spec.train.model_copy(update=train_update)})
    if tiny:
        spec = tiny_version(spec)
    b = Bench(spec, target, dev, steps=steps, warmup=args.warmup, json_path=args.json_path, profile=args.profile,
              size="tiny" if tiny else "full", clip=args.clip, tag=args.tag)
    b.meta["inductor_config"] = inductor_cfg
    b.run(batches, parts, modes, graphs, images=args.images, sample_steps=args.sample_steps)
    b.print_tables()
    return 0


# ------------------------------------------------------------------------------------------ helpers
def _inductor_config(items) -> dict:
    """Apply KEY=VALUE settings to torch._inductor.config (values parsed as Python literals)."""
    import ast

    import torch._inductor.config as icfg

    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep:
            raise BenchError(f"--inductor-config: expected KEY=VALUE, found {item!r}")
        try:
            value = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            value = val
        obj, *path, last = [icfg, *key.split(".")]
        for part in path:
            obj = getattr(obj, part, None)
        if obj is None or not hasattr(obj, last):
            raise BenchError(f"--inductor-config: torch._inductor.config has no setting {key!r}")
        setattr(obj, last, value)
        out[key] = value
    return out


def tiny_version(spec: Spec) -> Spec:
    """The spec shrunk for a CPU run: width 64, 4 heads, 8x8 input (16 tokens), encoder/decoder 1 block,
    2 middle blocks; passes, dtype and recipes kept."""
    d = spec.model_dump()
    d["model"].update(width=64, heads=4, depth=4)
    d["model"]["input"]["size"] = 8
    for p in d["passes"]:
        if p["name"] == "partition":
            p.update(encoder=1, decoder=1, middle=None)
        if p["name"] == "route":
            p["group"] = None
    d["name"] = f"{spec.name}-tiny"
    return load_spec(d)


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul rate (FLOP/s) of this device in `dtype`: the MFU denominator."""
    cuda = device.type == "cuda"
    n = 8192 if cuda else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    # on CUDA, half a second of matmuls first: the clocks settle as in a running step (timed cold, an H100's
    # figure moved by 5% between processes of one call); then the median of groups of back-to-back calls
    end = time.perf_counter() + (0.5 if cuda else 0.0)
    while time.perf_counter() < end:
        a @ b
        _sync(device)
    group = 10 if cuda else 1
    times = []
    for i in range(7 if cuda else 4):
        t = Timer(device)
        with t:
            for _ in range(group):
                a @ b
        if i >= 1:
            times.append(t.ms / group)
    return 2 * n ** 3 / (statistics.median(times) / 1e3)


class Timer:
    """Wall time of a region in ms: CUDA events on CUDA, perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.ms = float("nan")

    def __enter__(self):
        if self.cuda:
            self.e0, self.e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.e0.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.e1.record()
            torch.cuda.synchronize()
            self.ms = self.e0.elapsed_time(self.e1)
        else:
            self.ms = (time.perf_counter() - self.t0) * 1e3


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fx_cache():
    from torch._dynamo.utils import counters

    c = counters["inductor"]
    return c["fxgraph_cache_hit"], c["fxgraph_cache_miss"]


def graph_flops(built, batch: int, routed: bool, guidance: bool = False) -> float:
    """Forward FLOPs of the block graph at `batch` images (FlopCounterMode on meta tensors). guidance:
    the PDG graph on the 2*batch [cond; uncond] batch."""
    import torch.fx as fx

    from sprintc.graph import run_meta

    gm, ctx = built.graph_module, built.ctx
    if guidance:
        gg = fx.GraphModule(gm, ctx.guidance)
        args, kwargs = ctx.inputs(gg, batch, guidance=True)
        return float(sum(c.flops for c in run_meta(gg, *args, **kwargs).costs.values()))
    args, kwargs = ctx.inputs(gm, batch)
    if not routed:
        for k in ("ids_keep", "path_drop", "middle_rows"):
            kwargs.pop(k, None)
    return float(sum(c.flops for c in run_meta(gm, *args, **kwargs).costs.values()))


def _data_for(spec, batch, device, seed=0):
    """Fixed random (x, t, y, target) of a training step."""
    m = spec.model
    shape = (m.input.channels, *((m.input.frames,) if m.input.frames else ()), m.input.size, m.input.size)
    g = torch.Generator(device).manual_seed(seed)
    x = torch.randn(batch, *shape, device=device, generator=g)
    t = torch.rand(batch, device=device, generator=g)
    y = torch.randint(0, m.num_classes, (batch,), device=device, generator=g) if m.num_classes else None
    target = torch.randn(batch, m.out_channels, *shape[1:], device=device, generator=g)
    return x, t, y, target


def _loss_fn(model, x, t, y, target):
    out = model(x, t, y) if y is not None else model(x, t)
    return F.mse_loss(out.float(), target)


def _make_opt(model, spec, device, master: bool, capturable=False):
    from sprintc.optim import adamw_for

    return adamw_for(model, spec.train, 1e-4, device, master=master, capturable=capturable)


def _drop_opt(opt):
    """The row's optimizer goes; the model gets its float32 weights back for the next row's optimizer."""
    from sprintc.optim import MasterAdamW

    if isinstance(opt, MasterAdamW):
        opt.restore()


def _train_step(model, opt, batch, max_norm, clip):
    from sprintc.targets_api import clip_and_step

    opt.zero_grad(set_to_none=True)
    loss = _loss_fn(model, *batch)
    loss.backward()
    if clip == "fused":
        clip_and_step(opt, model.parameters(), max_norm)
    else:
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
        opt.step()
    return loss


def _set_routing(model, on: bool):
    s = getattr(model, "sprint", None)
    if s is not None:
        s.routing = on


# ------------------------------------------------------------------------------------------ bench
class Bench:
    def __init__(self, spec: Spec, target, device, *, steps, warmup, json_path=None, profile=None, size="full",
                 clip="fused", tag=""):
        from sprintc.compiler import compile_spec
        from sprintc.targets_api import compute_dtype

        self.spec, self.target, self.device = spec, target, device
        self.dtype = compute_dtype(target, device)
        self.master = spec.train.master_weights and self.dtype == torch.bfloat16  # as sprintc train on one GPU
        if not self.master:  # as sprintc train: a table is one product only with the master weights' layout
            self.target = target = target.model_copy(update={"batch_modulation": False})
        self.steps, self.warmup, self.json_path, self.clip = steps, warmup, json_path, clip
        self.profile, self.tag, self.host_ms = (Path(profile) if profile else None), tag, float("nan")
        if self.profile:
            self.profile.mkdir(parents=True, exist_ok=True)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        t0 = time.perf_counter()
        torch.manual_seed(0)
        self.built = compile_spec(spec)
        self.build_s = time.perf_counter() - t0
        # DiT zero-initialises adaLN and the head; give every weight a value so the timed kernels see real data
        with torch.no_grad():
            for p in self.built.model.parameters():
                if p.dim() > 1 and not p.abs().sum():
                    p.normal_(0, 0.02)
        self.routable = getattr(self.built.model, "sprint", None) is not None and self.built.model.sprint.plan is not None
        self.has_pdg = callable(getattr(self.built.model, "forward_guidance", None))
        peak = matmul_peak(device, self.dtype if self.dtype != torch.float32 else torch.float32)
        self.meta = {
            "spec": spec.name, "size": size, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dtype": target.dtype, "compile_mode": target.mode, "tune": target.tune, "multi_kernel": target.multi_kernel, "kernels": target.kernels,
            "regional": target.regional, "mix_order_reduction": target.mix_order_reduction,
            "pdl": target.pdl, "region_blocks": target.region_blocks, "tuned_matmuls": target.tuned_matmuls,
            "batch_modulation": target.batch_modulation,
            "params_M": round(sum(p.numel() for p in self.built.model.parameters()) / 1e6, 2),
            "matmul_peak_tflops": _sig(peak / 1e12), "steps": steps, "warmup": warmup, "clip": clip,
            "grad_clip": spec.train.grad_clip, "master_weights": self.master,
            "moments_dtype": spec.train.moments_dtype if self.master else "float32", "build_s": round(self.build_s, 2), "cpu_count": os.cpu_count(),
        }
        self.peak = peak
        self.results = {"meta": self.meta, "train": [], "sample": [], "sample250": [], "summary": []}

    # ----------------------------------------------------------------------------- plumbing
    def _save(self):
        if self.json_path:
            Path(self.json_path).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(self.json_path) + ".tmp")
            tmp.write_text(json.dumps(self.results, indent=1))
            tmp.replace(self.json_path)

    def _model(self, target_name):
        from sprintc.targets_api import lower

        m = copy.deepcopy(self.built.model)
        return lower(m, self.target.model_copy(update={"name": target_name}), device=self.device)

    def _data(self, batch):
        return _data_for(self.spec, batch, self.device)

    def _time(self, fn):
        """Median ms per call (device time between events, the device synchronised after each call);
        self.host_ms: median time until the call returns to Python (host-bound when close to ms)."""
        times, host = [], []
        for i in range(self.warmup + self.steps):
            with Timer(self.device) as tm:
                h0 = time.perf_counter()
                fn()
                h1 = time.perf_counter()
            if i >= self.warmup:
                times.append(tm.ms)
                host.append((h1 - h0) * 1e3)
        self.host_ms = statistics.median(host)
        return statistics.median(times), times

    def _reset_mem(self):
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def _mem(self):
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2) if self.device.type == "cuda" else None

    def _profile(self, name, fn, n=3):
        if not self.profile:
            return
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(n):
                fn()
            _sync(self.device)
        avg = prof.key_averages()
        text = f"{self.tag}{name}: {n} steps\n"
        if self.device.type == "cuda":
            text += "-- by device time\n" + avg.table(sort_by="self_cuda_time_total", row_limit=250, max_name_column_width=120)
        text += "\n-- by host time\n" + avg.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=90)
        (self.profile / f"profile_{self.tag}{name}.txt").write_text(text + "\n")

    # ----------------------------------------------------------------------------- runs
    def run(self, batches, parts, modes, graphs, images=64, sample_steps=250):
        if "cudagraph" in modes and self.device.type != "cuda":
            modes = [m for m in modes if m != "cudagraph"]
        graphs = [g for g in graphs if g == "dense" or self.routable]
        for B in batches:
            if "train" in parts:
                self.train(B, modes, graphs)
            if "sample" in parts:
                self.sample(B, modes)
        if "sample250" in parts:
            self.sample250(images, sample_steps, graph=False)
        if "sample250g" in parts and self.device.type == "cuda":
            self.sample250(images, sample_steps, graph=True)
        self._summarise()
        self._save()
        return self.results

    def _row(self, kind, **r):
        self.results[kind].append(r)
        self._save()
        print(json.dumps({kind: r}), flush=True)
        return r

    def train(self, B, modes, graphs):
        from sprintc.targets_api import CudaGraphStep

        data = self._data(B)
        fwd = {g: graph_flops(self.built, B, routed=(g == "routed")) for g in graphs}
        max_norm = self.spec.train.grad_clip
        clips = ["fused", "standard"] if self.clip == "both" else [self.clip]
        if max_norm <= 0:  # train.grad_clip 0: no clipping to fold or not
            clips = ["off"]
        compiled = None
        for mode in modes:
            self._reset_mem()
            if mode == "eager":
                model = self._model("eager")
            else:  # compiled and cudagraph share one lowered model (cudagraph alone compiles it too)
                compiled = compiled or self._model("inductor")
                model = compiled
            model.train()
            for g in graphs:
                _set_routing(model, g == "routed")
                for clip in (clips if mode == "compiled" else clips[:1]):
                    self._reset_mem()
                    row = dict(batch=B, graph=g, mode=mode, clip=clip)
                    opt = None
                    try:
                        if mode == "cudagraph":
                            opt = _make_opt(model, self.spec, self.device, self.master, capturable=True)
                            h0 = _fx_cache()
                            t0 = time.perf_counter()
                            # the model draws its own kept tokens: its generator is the graph's too
                            gen = getattr(getattr(model, "sprint", None), "generator", None)
                            step = CudaGraphStep(lambda b: _train_step(model, opt, (b["x"], b["t"], b.get("y"), b["target"]),
                                                                       max_norm, clips[0]).detach(),
                                                 generators=[gen] if gen is not None and gen.device.type == "cuda" else [],
                                                 optimizer=opt)
                            batch = {k: v for k, v in zip(("x", "t", "y", "target"), data) if v is not None}
                            for _ in range(step.warmup + 1):  # warm-up steps, then the capture
                                step(batch)
                            _sync(self.device)
                            row["capture_s"] = round(time.perf_counter() - t0, 2)
                            fn = lambda: step(batch)  # noqa: E731
                        else:
                            opt = _make_opt(model, self.spec, self.device, self.master)
                            h0 = _fx_cache()
                            t0 = time.perf_counter()
                            _train_step(model, opt, data, max_norm, clip)
                            _sync(self.device)
                            row["first_step_s"] = round(time.perf_counter() - t0, 2)
                            fn = lambda: _train_step(model, opt, data, max_norm, clip)  # noqa: E731
                        h1 = _fx_cache()
                        row["fx_cache_hit"], row["fx_cache_miss"] = h1[0] - h0[0], h1[1] - h0[1]
                        ms, times = self._time(fn)
                        flops = 3 * fwd[g]
                        row.update(ms=round(ms, 2), ms_min=round(min(times), 2), host_ms=round(self.host_ms, 2), img_s=round(B / ms * 1e3, 1),
                                   tflops=_sig(flops / ms / 1e9), mfu=_sig(flops / ms * 1e3 / self.peak),
                                   gflop_per_img=_sig(flops / B / 1e9), peak_mem_gb=self._mem())
                        if mode == "compiled" and "first_step_s" in row:
                            row["compile_s"] = round(row["first_step_s"] - ms / 1e3, 2)
                        if mode != "eager" and clip == clips[0]:
                            self._profile(f"train_{g}_{mode}_b{B}", fn)
                    except SprintcError:  # a bad spec or option is the user's to fix: stop with its message
                        raise
                    except torch.cuda.OutOfMemoryError as e:
                        row["error"] = f"out of memory: {first_line(e)}"
                    except Exception as e:  # a failing row must not lose the others; the error is reported
                        row["error"] = _describe(e)
                    self._row("train", **row)
                    _drop_opt(opt)
                    opt = step = fn = None
            if mode != "compiled":
                del model
            model = None
        compiled = None
        self._reset_mem()

    def sample(self, B, modes):
        from sprintc.targets_api import SamplingStep, prepare_inference

        m = self.spec.model
        if not m.num_classes:
            return
        guidances = ["cfg"] + (["pdg"] if self.has_pdg else [])
        fl = {"cfg": graph_flops(self.built, 2 * B, routed=False)}
        if self.has_pdg:
            fl["pdg"] = graph_flops(self.built, B, routed=False, guidance=True)
        x, t, y, _ = self._data(B)
        nets = {}
        for mode in modes:
            self._reset_mem()
            tname = "eager" if mode == "eager" else "inductor"
            if tname not in nets:
                nets[tname] = prepare_inference(self.built.model, self.target.model_copy(update={"name": tname}), device=self.device)
            net = nets[tname]
            row = dict(batch=B, mode=mode)
            for gd in guidances:
                try:
                    h0 = _fx_cache()
                    t0 = time.perf_counter()
                    step = SamplingStep(net, batch=B, shape=tuple(x.shape[1:]), guidance=gd, null_class=m.num_classes,
                                        channels=m.input.channels, device=self.device, cuda_graph=(mode == "cudagraph"))
                    step(x, t, y, 1.5)
                    _sync(self.device)
                    first = time.perf_counter() - t0
                    ms, _ = self._time(lambda: step(x, t, y, 1.5))
                    h1 = _fx_cache()
                    row[f"{gd}_ms"] = round(ms, 2)
                    row[f"{gd}_first_s"] = round(first, 2)
                    row[f"{gd}_tflops"] = _sig(fl[gd] / ms / 1e9)
                    row[f"{gd}_fx_cache"] = [h1[0] - h0[0], h1[1] - h0[1]]
                    if mode != "eager":
                        self._profile(f"sample_{gd}_{mode}_b{B}", lambda: step(x, t, y, 1.5))
                except SprintcError:
                    raise
                except torch.cuda.OutOfMemoryError as e:
                    row[f"{gd}_error"] = f"out of memory: {first_line(e)}"
                except Exception as e:
                    row[f"{gd}_error"] = _describe(e)
                step = None
            if "cfg_ms" in row and "pdg_ms" in row:
                row["pdg_over_cfg"] = round(row["pdg_ms"] / row["cfg_ms"], 3)
                row["flops_pdg_over_cfg"] = round(fl["pdg"] / fl["cfg"], 3)
            row["peak_mem_gb"] = self._mem()
            self._row("sample", **row)
        nets.clear()
        self._reset_mem()

    def sample250(self, images, steps, graph: bool):
        """A full SDE sampling of `images` images, CFG vs PDG, wall time. graph=False: sprintc.diffusion.sample
        on the compiled inference model; graph=True: the same Euler-Maruyama loop on the CUDA-graph step."""
        from sprintc.targets_api import SamplingStep, prepare_inference

        m = self.spec.model
        if not m.num_classes:
            return
        scale = self.spec.sample.scale if self.spec.sample.scale != 1 else 1.5
        net = prepare_inference(self.built.model, self.target, device=self.device)
        labels = torch.arange(images, device=self.device) % m.num_classes
        row = dict(images=images, steps=steps, scale=scale, interval=[0.0, 1.0], sampler="sde",
                   how="cuda-graph step loop" if graph else "sprintc.diffusion.sample, compiled model")
        for gd in ["cfg"] + (["pdg"] if self.has_pdg else []):
            try:
                if graph:
                    shape = (m.input.channels, *((m.input.frames,) if m.input.frames else ()), m.input.size, m.input.size)
                    step = SamplingStep(net, batch=images, shape=shape, guidance=gd, null_class=m.num_classes,
                                        channels=m.input.channels, device=self.device, cuda_graph=True)
                    run = lambda n: _sde_loop(step, labels, scale, n, shape, self.device)  # noqa: E731
                else:
                    from sprintc.diffusion import sample

                    run = lambda n: sample(net, self.spec, labels, guidance=gd, scale=scale, steps=n,  # noqa: E731
                                           sampler="sde", interval=(0.0, 1.0), generator=torch.Generator(self.device).manual_seed(0))
                run(2)  # compiles the shapes
                _sync(self.device)
                t0 = time.perf_counter()
                out = run(steps)
                _sync(self.device)
                row[f"{gd}_s"] = round(time.perf_counter() - t0, 2)
                row[f"{gd}_finite"] = bool(torch.isfinite(out).all())
            except SprintcError:
                raise
            except Exception as e:
                row[f"{gd}_error"] = _describe(e)
        if "cfg_s" in row and "pdg_s" in row:
            row["pdg_over_cfg"] = round(row["pdg_s"] / row["cfg_s"], 3)
        self._row("sample250", **row)
        del net
        self._reset_mem()

    # ----------------------------------------------------------------------------- report
    def _summarise(self):
        rows = [r for r in self.results["train"] if "ms" in r]
        out = []
        for B in sorted({r["batch"] for r in rows}):
            def pick(g, mode):
                cand = [r for r in rows if r["batch"] == B and r["graph"] == g and r["mode"] == mode]
                return min(cand, key=lambda r: r["ms"]) if cand else None
            best_r = min((r for r in rows if r["batch"] == B and r["graph"] == "routed"), key=lambda r: r["ms"], default=None)
            dense_c = pick("dense", "compiled")
            s = dict(batch=B)
            if best_r:
                s.update(routed_best_mode=best_r["mode"], routed_img_s=best_r["img_s"], routed_peak_mem_gb=best_r["peak_mem_gb"])
            if dense_c:
                s.update(dense_compiled_img_s=dense_c["img_s"], dense_compiled_mfu=dense_c["mfu"], dense_peak_mem_gb=dense_c["peak_mem_gb"])
            if best_r and dense_c:
                s["routed_over_dense_compiled"] = round(dense_c["ms"] / best_r["ms"], 2)
                if best_r["peak_mem_gb"] and dense_c["peak_mem_gb"]:
                    s["routed_mem_over_dense"] = round(best_r["peak_mem_gb"] / dense_c["peak_mem_gb"], 3)
            rc = pick("routed", "compiled")
            if rc and "compile_s" in rc:
                s["cold_compile_s"] = rc["compile_s"]
                s["cold_compile_fx_cache"] = [rc["fx_cache_hit"], rc["fx_cache_miss"]]
            out.append(s)
        self.results["summary"] = out

    def print_tables(self):
        from rich.console import Console
        from rich.table import Table

        con = Console(width=max(Console().width, 150))
        m = self.meta
        con.print(f"[bold]sprintc bench[/] {m['spec']} ({m['size']}, {m['params_M']}M params) on {m['device_name']}, "
                  f"torch {m['torch']}, {m['dtype']}, matmul peak {m['matmul_peak_tflops']} TFLOP/s")
        settings = [f"mode {m['compile_mode']}"] + [k for k in ("tune", "multi_kernel", "kernels", "mix_order_reduction", "pdl", "tuned_matmuls", "batch_modulation") if m.get(k)]
        settings += [] if m.get("regional", True) else ["whole model"]
        settings += [f"regions of {m['region_blocks']} blocks"] if m.get("regional", True) and m.get("region_blocks", 1) > 1 else []
        settings += [f"{k}={v}" for k, v in m.get("inductor_config", {}).items()]
        con.print("compile settings: " + ", ".join(settings))
        if self.results["train"]:
            t = Table(title="training step (fwd + bwd + clip + AdamW)")
            for c in ("batch", "graph", "mode", "clip", "ms", "img/s", "TFLOP/s", "MFU", "mem GB", "compile s", "note"):
                t.add_column(c, justify="right" if c not in ("graph", "mode", "clip", "note") else "left")
            for r in self.results["train"]:
                t.add_row(str(r["batch"]), r["graph"], r["mode"], r["clip"], _f(r.get("ms")), _f(r.get("img_s")),
                          _f(r.get("tflops")), _f(r.get("mfu")), _f(r.get("peak_mem_gb")),
                          _f(r.get("compile_s", r.get("capture_s"))), r.get("error", ""))
            con.print(t)
        if self.results["sample"]:
            t = Table(title="sampling step (B images, guided)")
            for c in ("batch", "mode", "CFG ms", "PDG ms", "PDG/CFG", "FLOPs PDG/CFG", "note"):
                t.add_column(c, justify="right" if c not in ("mode", "note") else "left")
            for r in self.results["sample"]:
                t.add_row(str(r["batch"]), r["mode"], _f(r.get("cfg_ms")), _f(r.get("pdg_ms")), _f(r.get("pdg_over_cfg")),
                          _f(r.get("flops_pdg_over_cfg")), r.get("cfg_error", "") + r.get("pdg_error", ""))
            con.print(t)
        for r in self.results["sample250"]:
            con.print(f"sampling {r['images']} images x {r['steps']} steps ({r['how']}): CFG {_f(r.get('cfg_s'))} s, "
                      f"PDG {_f(r.get('pdg_s'))} s, PDG/CFG {_f(r.get('pdg_over_cfg'))}")
        for s in self.results["summary"]:
            con.print("summary " + ", ".join(f"{k} {v}" for k, v in s.items()))


def _describe(e: BaseException) -> str:
    """One line for a failed row: the exception and, where it wraps others (Dynamo's BackendCompilerFailed, Inductor's
    errors from its compile workers), the innermost cause. A cause whose message only introduces a traceback (a compile
    worker's "An exception occurred in a subprocess:") is named by the traceback's last line, which says what failed."""
    inner, seen = e, {id(e)}
    while (found := getattr(inner, "inner_exception", None) or inner.__cause__) is not None and id(found) not in seen:
        inner = found
        seen.add(id(found))
    text = f"{type(e).__name__}: {first_line(e)}"
    if inner is e:
        return text
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    why = first_line(lines[-1] if len(lines) > 1 and lines[0].endswith(":") else inner)
    return f"{text} <- {type(inner).__name__}: {why}"


def _sig(v, digits=4):
    return float(f"{v:.{digits}g}")


def _f(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _sde_loop(step, labels, scale, steps, shape, device):
    """Euler-Maruyama on the linear flow path as sprintc.diffusion.flow_sde (t = linspace(1, 0.04), a last
    deterministic step to 0), float32 state, on the fixed-shape step."""
    g = torch.Generator(device).manual_seed(0)
    B = labels.shape[0]
    x = torch.randn(B, *shape, device=device, generator=g)
    ts = torch.linspace(1.0, 0.04, steps, dtype=torch.float64).tolist() + [0.0]
    tt = torch.empty(B, device=device)

    def drift(x, t):
        v = step(x, tt.fill_(t), labels, scale)
        score = -(x + (1 - t) * v) / t
        return v - t * score

    for i in range(steps - 1):
        t, tn = ts[i], ts[i + 1]
        dt = tn - t
        x = x + drift(x, t) * dt + math.sqrt(2 * t) * math.sqrt(abs(dt)) * torch.randn(x.shape, device=device, generator=g)
    return x + drift(x, ts[-2]) * (0.0 - ts[-2])
