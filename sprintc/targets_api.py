"""Lowering a built model to a target: `eager`, `inductor` (CPU or CUDA) or `aot` (torch.export +
AOTInductor package of the guidance sampling step).

    model = sprintc.build(spec)                  # or compile_spec(spec).model
    model = lower(model, spec.target)            # the same module object, compiled in place
    ddp = DistributedDataParallel(model, ...)    # then the optimizer

`lower` keeps the module object, its parameters and its state-dict keys: blocks are compiled with
`nn.Module.compile` (regional compilation; identical blocks share one compiled graph per input shape),
and `forward` / `forward_guidance` become instance methods that run the original ones under the
target's autocast dtype and return float32. A deep copy (an EMA model) keeps working and reuses the
compiled code.

Sampling: `prepare_inference` makes an inference copy (eval, no grad, parameters in the target dtype) and
`lower_sampling_step` returns the fixed-shape guided step (CFG or PDG), captured in a CUDA graph on
CUDA when `target.cuda_graphs`. `CudaGraphStep` captures a whole training step (forward, backward,
clipping, optimizer; DDP's all-reduces too) in a CUDA graph after a few plain warm-up steps, as `sprintc train`
and `sprintc bench` do; `clip_and_step` folds gradient clipping into a fused Adam(W) step.
"""
from __future__ import annotations

import copy
import importlib
import types
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from sprintc.errors import SprintcError
from sprintc.spec import TARGETS, TargetSpec
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TargetError(SprintcError):
    """A target, device, mode or dtype that cannot be used here."""


# ----------------------------------------------------------------------------------- resolution
def resolve_target(target=None, **overrides) -> TargetSpec:
    """A TargetSpec from a TargetSpec, a dict, a target name ('inductor') or None (the default)."""
    if target is None:
        data = {}
    elif isinstance(target, TargetSpec):
        data = target.model_dump()
    elif isinstance(target, str):
        data = {"name": target}
    elif isinstance(target, dict):
        data = dict(target)
    else:
        raise TargetError(f"target: expected a target name, a mapping or a TargetSpec, found {type(target).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    name, mode = data.get("name", "inductor"), data.get("mode", "default")
    if name not in TARGETS:
        raise TargetError(f"target: unknown target {name!r}; known: {', '.join(TARGETS)}")
    if mode not in MODES:
        raise TargetError(f"target.mode: unknown mode {mode!r}; known: {', '.join(MODES)}")
    if data.get("dtype", "bfloat16") not in DTYPES:
        raise TargetError(f"target.dtype: unknown dtype {data['dtype']!r}; known: {', '.join(DTYPES)}")
    try:
        return TargetSpec(**data)
    except Exception as e:  # pydantic ValidationError: name the field
        raise TargetError(f"target: {e}") from None


def resolve_device(target: TargetSpec | None = None, device=None) -> torch.device:
    """`device` (a string or torch.device) overrides target.device; 'auto' is CUDA when a GPU is visible."""
    want = device if device is not None else (target.device if target is not None else "auto")
    if isinstance(want, torch.device):
        want = str(want)
    if not isinstance(want, str):
        raise TargetError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', found {want!r}")
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(want)
    except RuntimeError:
        raise TargetError(f"device: {want!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise TargetError(f"device: {want!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise TargetError(f"device {want}: {why} (torch {torch.__version__}); use --device cpu or target.device: auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TargetError(f"device {want}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def compute_dtype(target: TargetSpec, device: torch.device) -> torch.dtype:
    """The autocast dtype of the target on this device; raises when the device cannot run it."""
    dtype = DTYPES[target.dtype]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
            raise TargetError(f"target.dtype bfloat16: the GPU {name} (compute capability {cap}) cannot run bfloat16; "
                              "set target.dtype: float16 or float32")
    elif dtype == torch.float16:
        raise TargetError("target.dtype float16: sprintc does not run float16 on the CPU (no fast kernels, no loss "
                          "scaling); set target.dtype: bfloat16 or float32, or use a GPU")
    return dtype


# ----------------------------------------------------------------------------------- lowering
@dataclass
class Lowering:
    """What `lower` did to a model (kept in model.__dict__['_sprintc_lowering'])."""

    target: TargetSpec
    device: torch.device
    dtype: torch.dtype
    inner_forward: Callable | None = None      # the forward that the autocast wrapper calls
    inner_guidance: Callable | None = None
    regions: list[str] = field(default_factory=list)  # qualified names of the compiled modules


def lowering_of(model: nn.Module) -> Lowering | None:
    return model.__dict__.get("_sprintc_lowering")


def _cast_out(out):
    if isinstance(out, torch.Tensor) and out.dtype in (torch.bfloat16, torch.float16):
        return out.float()
    return out


def _lowered_forward(self, *args, **kwargs):
    low = self.__dict__["_sprintc_lowering"]
    fwd = low.inner_forward or types.MethodType(type(self).forward, self)
    if low.dtype == torch.float32:
        return fwd(*args, **kwargs)
    with torch.autocast(low.device.type, dtype=low.dtype):
        return _cast_out(fwd(*args, **kwargs))


def _lowered_guidance(self, *args, **kwargs):
    low = self.__dict__["_sprintc_lowering"]
    if low.dtype == torch.float32:
        return low.inner_guidance(*args, **kwargs)
    with torch.autocast(low.device.type, dtype=low.dtype):
        return _cast_out(low.inner_guidance(*args, **kwargs))


def wrap_forwards(model: nn.Module, low: Lowering):
    """Install the autocast wrappers as instance methods (deep copies rebind them to the copy)."""
    low.inner_forward = model.__dict__.get("forward")  # bound routed_forward of an installed graph, or None
    low.inner_guidance = model.__dict__.get("forward_guidance")
    model.__dict__["_sprintc_lowering"] = low
    model.__dict__["forward"] = types.MethodType(_lowered_forward, model)
    if low.inner_guidance is not None:
        model.__dict__["forward_guidance"] = types.MethodType(_lowered_guidance, model)


def lower(model: nn.Module, target=None, *, device=None) -> nn.Module:
    """Lower `model` in place for `target` (a TargetSpec, dict or name; None: inductor) on `device`
    (overrides target.device). Returns the same module object. Call after building (and after making
    an EMA copy, if any) and before DDP / the optimizer. Lowering an already lowered model raises."""
    if not isinstance(model, nn.Module):
        raise TargetError(f"lower: expected an nn.Module, found {type(model).__name__}")
    t = resolve_target(target)
    dev = resolve_device(t, device)
    dtype = compute_dtype(t, dev)
    prev = lowering_of(model)
    if prev is not None:
        raise TargetError(f"lower: the model is already lowered (target {prev.target.name} on {prev.device}); "
                          "lower a fresh model (sprintc.build) instead")
    model.to(dev)
    mod = importlib.import_module(f"sprintc.targets.{t.name}")
    return mod.lower(model, t, dev, dtype)


# ----------------------------------------------------------------------------------- inference
def prepare_inference(model: nn.Module, target=None, *, device=None, copy_model: bool = True) -> nn.Module:
    """An inference model: (a deep copy of) `model` in eval mode without gradients, its floating
    parameters cast to the target dtype (no per-step weight casts), lowered for `target` when not
    lowered yet. With copy_model=False the model itself is converted (do not train it afterwards)."""
    t = resolve_target(target)
    dev = resolve_device(t, device)
    dtype = compute_dtype(t, dev)
    net = copy.deepcopy(model) if copy_model else model
    net.eval().requires_grad_(False)
    net.to(dev)
    for p in net.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    if lowering_of(net) is None:
        lower(net, t, device=dev)
    return net


class SamplingStep:
    """The fixed-shape guided prediction of one sampling step, (x, t, y, scale) -> (B, C, ...) float32:
    guidance 'pdg' runs model.forward_guidance on [x; x] with labels [y; null], 'cfg' runs the dense
    model on that 2B batch, 'none' the model on x. Guided = u + scale (c - u) on the first `channels`
    channels (the rest are the conditional half's). On CUDA with cuda_graph=True the step is a CUDA
    graph replay on static buffers (inputs are copied in; the output is a fresh tensor)."""

    def __init__(self, model: nn.Module, *, batch: int, shape: tuple[int, ...], guidance: str, null_class: int,
                 channels: int, device: torch.device, cuda_graph: bool, warmup: int = 3):
        if guidance not in ("pdg", "cfg", "none"):
            raise TargetError(f"guidance: unknown guidance {guidance!r}; known: pdg, cfg, none")
        if guidance == "pdg" and not callable(getattr(model, "forward_guidance", None)):
            raise TargetError("guidance pdg: the model has no path-drop guidance graph; the spec needs the "
                              "partition and pdg passes (`- name: pdg`); use guidance cfg")
        if guidance != "none" and null_class <= 0:
            raise TargetError(f"guidance {guidance}: the model is unconditional (num_classes 0); use guidance none")
        self.model, self.batch, self.shape, self.guidance = model, batch, tuple(shape), guidance
        self.null, self.channels, self.device = null_class, channels, device
        self.x = torch.randn(batch, *shape, device=device)
        self.t = torch.rand(batch, device=device)
        self.y = torch.randint(0, max(null_class, 1), (batch,), device=device)
        self.scale = torch.ones((), device=device)
        self.graph = None
        if cuda_graph and device.type == "cuda":
            self._capture(warmup)

    def _compute(self, x, t, y, scale):
        m = self.model
        with torch.no_grad():
            if self.guidance == "none":
                return (m(x, t, y) if self.null > 0 else m(x, t)).float()
            null = torch.full_like(y, self.null)
            x2, t2, y2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])
            out = (m.forward_guidance(x2, t2, y2) if self.guidance == "pdg" else m(x2, t2, y2)).float()
            c, u = out.chunk(2)
            C = self.channels
            g = u[:, :C] + scale * (c[:, :C] - u[:, :C])
            return g if C == c.shape[1] else torch.cat([g, c[:, C:]], 1)

    def _capture(self, warmup):
        s = torch.cuda.Stream(self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(s):
            for _ in range(warmup):
                self._compute(self.x, self.t, self.y, self.scale)
        torch.cuda.current_stream(self.device).wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._compute(self.x, self.t, self.y, self.scale)

    def __call__(self, x, t, y=None, scale: float | torch.Tensor = 1.0):
        if tuple(x.shape) != (self.batch, *self.shape):
            raise TargetError(f"sampling step: x has shape {tuple(x.shape)}, the step was lowered for "
                              f"{(self.batch, *self.shape)}; lower another step for this batch")
        if y is None and self.null > 0:
            raise TargetError("sampling step: the model is class-conditional; give the labels y")
        if self.graph is None:
            return self._compute(x, t, y, torch.as_tensor(scale, dtype=torch.float32, device=x.device))
        self.x.copy_(x)
        self.t.copy_(t)
        if y is not None:
            self.y.copy_(y)
        self.scale.fill_(scale) if not isinstance(scale, torch.Tensor) else self.scale.copy_(scale)
        self.graph.replay()
        return self.out.clone()


def lower_sampling_step(model: nn.Module, target=None, *, batch: int, guidance: str = "pdg", device=None,
                        copy_model: bool = True, cuda_graphs: bool | None = None) -> SamplingStep:
    """The guided sampling step of `model` for a fixed image batch, lowered for `target`: an inference
    copy (prepare_inference) whose step is captured in a CUDA graph on CUDA (target.cuda_graphs, or
    `cuda_graphs` when given)."""
    if batch < 1:
        raise TargetError(f"batch: {batch} must be >= 1")
    t = resolve_target(target)
    dev = resolve_device(t, device)
    net = model if lowering_of(model) is not None and not copy_model else prepare_inference(model, t, device=dev, copy_model=copy_model)
    cfg = getattr(net, "cfg", None)
    if cfg is None:
        raise TargetError("lower_sampling_step: the model has no `cfg` (ModelSpec); build it with sprintc.build")
    shape = (cfg.input.channels, *((cfg.input.frames,) if cfg.input.frames else ()), cfg.input.size, cfg.input.size)
    use_graph = t.cuda_graphs if cuda_graphs is None else cuda_graphs
    return SamplingStep(net, batch=batch, shape=shape, guidance=guidance, null_class=cfg.num_classes,
                        channels=cfg.input.channels, device=dev, cuda_graph=use_graph)


# ----------------------------------------------------------------------------------- training
def clip_and_step(optimizer: torch.optim.Optimizer, params, max_norm: float) -> torch.Tensor | None:
    """Clip the gradients to total norm `max_norm` and take the optimizer step, without a host sync.
    For a fused Adam/AdamW the clip factor is folded into the fused kernel (its `grad_scale`, which
    divides each gradient), so the gradients are read once instead of three times. Returns the total
    gradient norm before clipping (a tensor), or None when max_norm <= 0."""
    from sprintc.optim import MasterAdamW

    if isinstance(optimizer, MasterAdamW):
        return optimizer.clip_and_step(max_norm)
    params = [p for p in params if p.grad is not None]
    if max_norm <= 0:
        optimizer.step()
        return None
    fused = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) and all(g.get("fused") for g in optimizer.param_groups)
    if not fused:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        optimizer.step()
        return norm
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    # clip_grad_norm_ multiplies by min(1, max_norm / (norm + 1e-6)); the fused step divides by its inverse
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
    try:
        optimizer.step()
    finally:
        optimizer.grad_scale = None
    return norm


class CaptureError(SprintcError):
    """A step that could not be captured in a CUDA graph (an op that syncs with the host, say)."""


class CudaGraphStep:
    """`step(batch)` (batch: a dict of tensors; no host sync, fixed shapes) run as it is for the first `warmup`
    calls on a side stream, then captured once in a CUDA graph on that stream and replayed: each later call copies
    its batch into the captured call's input buffers and returns the captured outputs, one launch instead of
    thousands. A training step qualifies when its optimizer is capturable (AdamW(fused=True, capturable=True),
    the lr a device tensor to change it) and its randomness comes from the default CUDA generator or from
    `generators`; pass its `optimizer` to set the gradients to None before the capture. For DDP, build DDP under
    `torch.cuda.stream(stream)` and warm up 11 calls (PyTorch's CUDA-graph notes); the graph then holds the
    all-reduces. A failed capture raises CaptureError. Call `release()` before `destroy_process_group` (a live
    graph holding NCCL calls makes it hang, pytorch/pytorch#115388)."""

    def __init__(self, step: Callable, *, warmup: int = 3, stream=None, generators=(), optimizer=None):
        self.step, self.warmup, self.stream, self.generators = step, warmup, stream, tuple(generators)
        self.optimizer = optimizer
        self.runs, self.graph, self.static, self.out = 0, None, None, None

    def __call__(self, batch: dict):
        if self.graph is not None:
            for k, v in batch.items():
                self.static[k].copy_(v, non_blocking=True)
            self.graph.replay()
            return self.out
        dev = next(iter(batch.values())).device
        if dev.type != "cuda":
            raise TargetError("CUDA graphs need a CUDA device")
        side = self.stream = self.stream or torch.cuda.Stream(dev)  # warm-up and capture on one stream
        if self.runs < self.warmup:
            self.runs += 1
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                out = self.step(batch)
            torch.cuda.current_stream(dev).wait_stream(side)
            return out
        self.static = {k: v.clone() for k, v in batch.items()}
        graph = torch.cuda.CUDAGraph()
        for g in self.generators:
            graph.register_generator_state(g)
        if self.optimizer is not None:  # the captured backward then allocates the gradients in the graph's pool
            self.optimizer.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph, stream=side):
                self.out = self.step(self.static)
        except Exception as e:  # noqa: BLE001 - whatever broke the capture, said as one error
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            _end_generator_capture([torch.cuda.default_generators[index], *self.generators])
            raise CaptureError(f"CUDA graph capture of the step failed ({type(e).__name__}: {e})") from e
        self.graph = graph
        graph.replay()
        return self.out

    def release(self):
        if self.graph is not None:
            self.graph.reset()
            self.graph = None


def _end_generator_capture(generators):
    """After a failed capture: torch marks a graph's generators as capturing when the capture begins and unmarks them
    only when it ends well, so every later draw from them fails ("Offset increment outside graph capture encountered
    unexpectedly"), the plain steps that go on without the graph included. Each gets a fresh state with its seed and
    offset."""
    for g in generators:
        fresh = torch.Generator(g.device)
        fresh.set_state(g.get_state())
        g.graphsafe_set_state(fresh)


# ----------------------------------------------------------------------------------- aot
def export_aot(built, out_path, **kwargs):
    """torch.export + AOTInductor package of the guidance sampling step (see sprintc.targets.aot)."""
    from sprintc.targets.aot import export_aot as _export

    return _export(built, out_path, **kwargs)
