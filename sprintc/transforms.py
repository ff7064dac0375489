"""`sprintc.transform(model)`: SPRINT's passes applied in place to a transformer the user already has
(the style of torchao's `quantize_(model, config, filter_fn)`).

    report = sprintc.transform(model)          # finds the block stack, routes, fuses, adds PDG
    print(report)                               # blocks per stage, tokens N -> M, new parameters, FLOPs
    sprintc.untransform(model)                  # the original model again

How: the model is traced with torch.fx with every module that does not contain a block as an opaque leaf
(so the block graph holds embedders, blocks, a head and glue ops), shapes are static except the batch
size (meta tensors run alongside the trace), the passes of `sprintc.pipeline` rewrite that graph, and
`sprintc.pipeline.install` makes it the model's forward. New parameters live under `model.sprint`.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import operator
import re
import sys
import traceback
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
from pydantic import ValidationError, model_validator
from torch.utils import _pytree as pytree

import sprintc.passes  # noqa: F401  (registers the passes)
from sprintc import routing
from sprintc.errors import PassError, SpecError, SprintcError, first_line
from sprintc.graph import BlockTracer, _module_meta, bind, run_meta
from sprintc.pipeline import REGISTRY, Context, install, routed_forward, run_pipeline, uninstall
from sprintc.spec import FusePass, PartitionPass, PassSpec, PathDropPass, PDGPass, RoutePass, Strict


class TransformError(SprintcError):
    """A model that `sprintc.transform` cannot rewrite (wrapped, untraceable, no block stack, ...)."""


# ------------------------------------------------------------------------------------------ config
class TransformConfig(Strict):
    """The pass pipeline to apply: the same list as a spec's `passes:` section. None means the SPRINT
    reference pipeline: partition 2/2, route structured 0.75, fuse concat_linear, path_drop 0.1, and
    pdg when the model has a null class."""

    passes: list[PassSpec] | None = None

    @model_validator(mode="after")
    def _once(self):
        names = [p.name for p in self.passes or []]
        for n in set(names):
            if names.count(n) > 1:
                raise ValueError(f"passes: pass {n!r} is listed {names.count(n)} times; list each pass once")
        return self

    def resolved(self, null_class: bool) -> list:
        if self.passes is not None:
            return list(self.passes)
        ref = [{"name": "partition", "encoder": 2, "decoder": 2}, {"name": "route", "sampler": "structured", "drop": 0.75},
               {"name": "fuse", "kind": "concat_linear"}, {"name": "path_drop", "p": 0.1}]
        return TransformConfig(passes=ref + ([{"name": "pdg"}] if null_class else [])).passes


_PASS_CLASSES = {typing.get_args(c.model_fields["name"].annotation)[0]: c
                 for c in (PartitionPass, RoutePass, FusePass, PathDropPass, PDGPass)}


def _config(config) -> TransformConfig:
    if config is None:
        return TransformConfig()
    if isinstance(config, TransformConfig):
        return config
    if isinstance(config, (list, tuple)):
        config = {"passes": list(config)}
    if not isinstance(config, dict):
        raise SpecError(f"config: expected a TransformConfig, a dict {{'passes': [...]}} or a list of passes, found {type(config).__name__}")
    try:
        return TransformConfig.model_validate(config)
    except ValidationError as e:
        raise SpecError(_config_error(e)) from None


def _config_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors(include_url=False):
        # pydantic puts the pass name of the tagged union in the path (passes.1.route.drop): drop it
        loc = [p for i, p in enumerate(e["loc"]) if not (i >= 2 and e["loc"][i - 2] == "passes" and p in REGISTRY)]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            cls = _PASS_CLASSES.get(e["loc"][2]) if len(e["loc"]) > 3 else TransformConfig
            msg = f"unknown key; allowed here: {', '.join(k for k in cls.model_fields if k != 'name')}"
        elif "input" in e and e["type"] != "value_error" and not isinstance(e["input"], (dict, list)):
            msg = f"found {e['input']!r}: {msg}"
        lines.append(f"transform config {key}: {msg}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ report
@dataclass
class TransformReport:
    model: str                              # class name
    blocks: str                             # path of the block stack, e.g. "transformer_blocks"
    stages: dict[str, list[int]]            # encoder / middle / decoder block indices
    tokens: int                             # N: tokens the blocks see
    kept: int                               # M: tokens the middle blocks see in routed training
    grid: tuple[int, ...]                   # grid of the routable tokens
    protected: tuple[int, ...]              # token indices never dropped
    passes: list[str]
    new_parameters: dict[str, int]          # name -> number of elements, all under `sprint.`
    flops_dense: int                        # forward FLOPs per sample of the original model
    flops_routed: int                       # ... of the transformed model routing in training (no path drop)
    notes: list[str] = field(default_factory=list)  # what was inferred, and from what

    @property
    def new_parameter_count(self) -> int:
        return sum(self.new_parameters.values())

    @property
    def flop_ratio(self) -> float:
        return self.flops_routed / self.flops_dense

    def __str__(self) -> str:
        st = self.stages
        lines = [
            f"sprintc.transform: {self.model}",
            f"  block stack   {self.blocks} ({sum(map(len, st.values()))} blocks)",
            *(f"  {name:<13} {_span(self.blocks, idx)}" for name, idx in st.items()),
            f"  tokens        {self.tokens} -> {self.kept} in the middle (grid {'x'.join(map(str, self.grid))}"
            + (f" + {len(self.protected)} protected: {_indices(self.protected)})" if self.protected else ")"),
            f"  passes        {', '.join(self.passes)}",
            f"  new params    {self.new_parameter_count:,}: " + ", ".join(f"{k} {v:,}" for k, v in self.new_parameters.items()),
            f"  FLOPs/sample  dense {self.flops_dense / 1e6:,.2f} M, routed {self.flops_routed / 1e6:,.2f} M (x{self.flop_ratio:.3f})",
        ]
        return "\n".join(lines + [f"  note          {n}" for n in self.notes])


def _span(prefix, idx):
    if not idx:
        return "none"
    return f"{prefix}.{idx[0]}" + (f" .. {prefix}.{idx[-1]} ({len(idx)})" if len(idx) > 1 else "")


def _indices(idx):
    idx = list(idx)
    if len(idx) > 2 and idx == list(range(idx[0], idx[-1] + 1)):
        return f"{idx[0]}..{idx[-1]}"
    return ", ".join(map(str, idx))


# ------------------------------------------------------------------------------------------ API
def transform(model: nn.Module, config=None, *, blocks: str | None = None, filter_fn: Callable | None = None,
              grid: tuple[int, ...] | None = None, example_inputs=None, protected=None) -> TransformReport:
    """Rewrite `model` in place with SPRINT's passes and return what changed.

    config: TransformConfig, {"passes": [...]} or a list of passes (a spec's `passes:` section); None:
        the reference pipeline. blocks: path of the block list ("transformer_blocks"); found by tracing when
        None. filter_fn(module, fqn): the blocks that may be routed (the middle; contiguous). grid: the token
        grid (H, W) of the routable tokens; inferred from the patch embedding when None. example_inputs:
        the forward's inputs for one batch (a tuple, a dict of keyword inputs, or (tuple, dict)); inferred
        for forward(x[, t, y]) when None; dim 0 of every tensor is the batch. protected: token indices
        never dropped, or a function n_tokens -> indices; default: timm's `num_prefix_tokens`.
    """
    _refuse_wrapped(model)
    if "sprint" in model._modules or "forward" in model.__dict__:
        raise TransformError(f"{type(model).__name__} is already transformed (it has model.sprint or a replaced forward); "
                             "call sprintc.untransform(model) first to transform it again")
    if hasattr(model, "sprint"):
        raise TransformError(f"{type(model).__name__} already has an attribute `sprint`; sprintc puts its parameters there")
    cfg = _config(config)
    null = _null_class(model)
    passes = cfg.resolved(null is not None)
    names = [p.name for p in passes]
    if not passes:
        raise SpecError("transform config passes: the list is empty; name the passes to apply (or pass no config for the reference pipeline)")
    notes: list[str] = []
    if "pdg" in names and null is None:
        raise PassError(f"passes.pdg: {type(model).__name__} has no null class (no label embedding with num_classes + 1 rows), "
                        "so path-drop guidance has no unconditional half; remove pdg from the passes")

    inputs = _inputs(model, example_inputs, grid, notes)
    stacks = _candidates(model) if blocks is None else _named_stack(model, blocks)
    if not stacks:
        raise TransformError(f"{type(model).__name__} has no block stack: no nn.ModuleList / nn.Sequential of two or more "
                             "identical blocks; pass blocks='path.to.list' if its blocks live elsewhere")
    gm, out, stacks = _trace_some(model, stacks, inputs)
    prefix, n_tokens, width = _choose_stack(model, gm, stacks, inputs, blocks is not None)
    stack = model.get_submodule(prefix)

    route_cfg = next((p for p in passes if p.name == "route"), None)
    prot = _protected(model, protected, route_cfg, n_tokens, notes)
    grid = _grid(model, grid, n_tokens - len(prot), prefix, n_tokens, prot, notes)
    if filter_fn is not None:
        passes = _apply_filter(passes, filter_fn, stack, prefix)
        notes.append("middle chosen by filter_fn")

    example = _example_fn(inputs)
    dense = _flops(gm, example, None)
    ctx = Context(root=model, blocks=prefix, grid=grid, tokens=n_tokens, width=width, example=example,
                  null_class=null is not None, protected=prot)
    try:
        gm, _ = run_pipeline(gm, passes, ctx)
        routed = _flops(gm, example, ctx.plan)
    except SprintcError:
        if "sprint" in model._modules:  # the passes may have attached it before failing
            del model._modules["sprint"]
        raise
    install(model, gm, ctx)
    p = next(model.parameters(), None)
    if p is not None:
        model.sprint.to(device=p.device, dtype=p.dtype if p.is_floating_point() else None)
    model.sprint.transform = _State(inputs, out, null, _TRAINING in {n.target for n in gm.graph.nodes if n.op == "placeholder"})
    model.__dict__["forward"] = bind(_forward, model)
    if model.sprint.guidance_fn is not None:
        model.__dict__["forward_guidance"] = bind(_forward_guidance, model)

    stages = {s: [i for i, n in enumerate(_block_calls(gm, prefix)) if n.meta.get("stage") == s]
              for s in ("encoder", "middle", "decoder")}
    if "partition" not in names:
        stages = {"encoder": list(range(len(stack))), "middle": [], "decoder": []}
    return TransformReport(
        model=type(model).__name__, blocks=prefix, stages=stages, tokens=n_tokens,
        kept=ctx.plan.kept if ctx.plan else n_tokens, grid=tuple(grid), protected=tuple(prot),
        passes=list(ctx.applied), new_parameters={f"sprint.{k}": v.numel() for k, v in model.sprint.named_parameters()},
        flops_dense=dense, flops_routed=routed, notes=notes)


def untransform(model: nn.Module) -> nn.Module:
    """Undo `transform`: the original forward, no `sprint` parameters. Returns the model."""
    _refuse_wrapped(model)
    if "sprint" not in model._modules or not hasattr(model.sprint, "transform"):
        raise TransformError(f"{type(model).__name__} was not transformed by sprintc.transform (no model.sprint); nothing to undo")
    uninstall(model)
    return model


# ------------------------------------------------------------------------------------------ wrappers
_WRAPPERS = {  # class name found in the MRO -> what wrapped it
    "DistributedDataParallel": "DistributedDataParallel", "DataParallel": "DataParallel",
    "FullyShardedDataParallel": "FSDP", "FSDPModule": "FSDP2 fully_shard", "OptimizedModule": "torch.compile",
}


def _refuse_wrapped(model: nn.Module):
    if not isinstance(model, nn.Module):
        raise TransformError(f"expected an nn.Module, found {type(model).__name__}")
    for path, m in model.named_modules():
        kinds = [_WRAPPERS[c.__name__] for c in type(m).__mro__ if c.__name__ in _WRAPPERS and c.__module__.startswith("torch.")]
        if getattr(m, "_compiled_call_impl", None) is not None:
            kinds.append("Module.compile()")
        if kinds:
            where = f"the model ({type(model).__name__})" if not path else f"{path} ({type(m).__name__})"
            raise TransformError(
                f"{where} is already wrapped by {kinds[0]}; sprintc.transform rewrites the plain module. The order is: "
                "transform, then compile, then wrap (DDP / fully_shard), then build the optimizer: "
                "`sprintc.transform(model); model = torch.compile(model); model = DDP(model)`")


# ------------------------------------------------------------------------------------------ inputs
_TIME = {"t", "timestep", "timesteps", "time", "times", "sigma", "sigmas", "noise_level"}
_LABEL = {"y", "class_labels", "class_label", "labels", "label", "classes"}


@dataclass
class _Inputs:
    sig: inspect.Signature
    fed: list[str]                                   # parameters the graph takes, in signature order
    make: Callable[[int], dict[str, Any]]            # batch -> {name: meta tensor}
    concrete: dict[str, Any]                         # the other parameters: the value they are traced with


def _inputs(model, example_inputs, grid, notes) -> _Inputs:
    sig = inspect.signature(type(model).forward)
    params = list(sig.parameters.values())[1:]
    cls = type(model).__name__
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise TransformError(f"{cls}.forward takes *args/**kwargs; sprintc.transform needs named parameters. "
                             "Wrap the model in a module whose forward(x, t, y) calls it")
    if example_inputs is not None:
        args, kwargs = _split_example(example_inputs)
        try:
            bound = sig.bind(None, *args, **kwargs)
        except TypeError as e:
            raise TransformError(f"example_inputs do not fit {cls}.forward{_sig_text(sig)}: {e}") from None
        given = {k: v for k, v in bound.arguments.items() if k != "self" and isinstance(v, torch.Tensor)}
        fixed = {k: v for k, v in bound.arguments.items() if k != "self" and not isinstance(v, torch.Tensor)}
    else:
        fixed = {}
        given = _infer_inputs(model, params, grid, notes)
    fed = [p.name for p in params if p.name in given]
    missing = [p.name for p in params if p.name not in given and p.name not in fixed and p.default is inspect.Parameter.empty]
    if missing:
        raise TransformError(f"{cls}.forward{_sig_text(sig)} needs {', '.join(missing)}, which sprintc cannot make up; "
                             "pass example_inputs=(...) with one batch of real inputs")
    concrete = {p.name: fixed.get(p.name, False if p.name == "return_dict" else p.default) for p in params if p.name not in given}
    return _Inputs(sig, fed, lambda b: {k: _rebatch(given[k], b) for k in fed}, concrete)


def _split_example(ex):
    if isinstance(ex, torch.Tensor):
        return (ex,), {}
    if isinstance(ex, dict):
        return (), ex
    if isinstance(ex, (tuple, list)) and len(ex) == 2 and isinstance(ex[0], (tuple, list)) and isinstance(ex[1], dict):
        return tuple(ex[0]), ex[1]
    if isinstance(ex, (tuple, list)):
        return tuple(ex), {}
    raise TransformError(f"example_inputs: expected a tensor, a tuple of inputs, a dict of keyword inputs or (tuple, dict); found {type(ex).__name__}")


def _sig_text(sig):
    return "(" + ", ".join(list(sig.parameters)[1:]) + ")"


def _rebatch(v, batch):
    """Shape-only stand-in with batch size `batch` (meta tensors: no memory, no compute)."""
    if isinstance(v, torch.Tensor) and v.dim() > 0:
        return torch.empty((batch, *v.shape[1:]), dtype=v.dtype, device="meta")
    if isinstance(v, torch.Tensor):
        return torch.empty((), dtype=v.dtype, device="meta")
    return v


def _infer_inputs(model, params, grid, notes) -> dict:
    """forward(x[, t][, y]): x from the patch embedding, t float (B,), y int (B,)."""
    cls = type(model).__name__
    if not params:
        raise TransformError(f"{cls}.forward takes no inputs")
    conv = next(((p, m) for p, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))
                 and m.kernel_size == m.stride and max(m.kernel_size) > 1), None)
    if conv is None:
        raise TransformError(f"cannot tell the input shape of {cls}.forward: no patch-embedding convolution (a Conv2d whose stride "
                             "equals its kernel) was found; pass example_inputs=(x, t, y) with one batch of real inputs")
    path, c = conv
    gsize = tuple(grid) if grid is not None else _embed_grid(model, path)
    if gsize is None:
        raise TransformError(f"cannot tell the image size {cls} expects: {path} has no grid_size, the model no config.sample_size "
                             "and no square pos_embed; pass grid=(H, W) (tokens per side) or example_inputs")
    if len(gsize) != len(c.kernel_size):
        raise TransformError(f"grid {gsize} has {len(gsize)} axes but the patch embedding {path} is {len(c.kernel_size)}-D")
    shape = (1, c.in_channels, *(g * k for g, k in zip(gsize, c.kernel_size)))
    given = {params[0].name: torch.empty(shape, dtype=c.weight.dtype, device="meta")}
    notes.append(f"input {params[0].name} (B, {c.in_channels}, {', '.join(str(g * k) for g, k in zip(gsize, c.kernel_size))}) from {path}")
    for p in params[1:]:
        if p.name in _TIME:
            given[p.name] = torch.empty(1, device="meta")
        elif p.name in _LABEL:
            given[p.name] = torch.empty(1, dtype=torch.long, device="meta")
    return given


def _embed_grid(model, conv_path) -> tuple[int, ...] | None:
    parent = model.get_submodule(conv_path.rpartition(".")[0]) if "." in conv_path else model
    g = getattr(parent, "grid_size", None)  # timm PatchEmbed
    if isinstance(g, (tuple, list)) and all(isinstance(v, int) for v in g):
        return tuple(g)
    h, w = getattr(parent, "height", None), getattr(parent, "width", None)  # diffusers PatchEmbed: tokens per side
    if isinstance(h, int) and isinstance(w, int):
        return (h, w)
    cfg = getattr(model, "config", None)
    size, patch = getattr(cfg, "sample_size", None), getattr(cfg, "patch_size", None)
    if isinstance(size, int) and isinstance(patch, int):
        return (size // patch, size // patch)
    pos = getattr(model, "pos_embed", None)  # an absolute position table (1, N, D) over a square grid
    if isinstance(pos, torch.Tensor) and pos.dim() == 3 and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
        return (math.isqrt(pos.shape[1]),) * 2
    return None


def _example_fn(inputs: _Inputs):
    return lambda batch: ((), inputs.make(batch))


# ------------------------------------------------------------------------------------------ tracing
class _ShapeProxy(fx.Proxy):
    """A proxy whose sizes are plain ints except the batch dimension, so code like
    `int(x.shape[1] ** 0.5)` traces. The tracer runs each op on meta tensors at two batch sizes;
    a dim that differs between them is the batch and stays symbolic."""

    def __getattr__(self, k):
        if k == "shape":
            s = self.tracer.static_size(self)
            if s is not None:
                return s
        if k == "ndim":
            v = self.tracer.vals.get(self.node)
            if v is not None and isinstance(v[0], torch.Tensor):
                return v[0].dim()
        return super().__getattr__(k)

    def __len__(self):
        s = self.tracer.static_size(self)
        if s is not None and s and isinstance(s[0], int):
            return s[0]
        return super().__len__()


_TRAINING = "module_training"  # graph input: the model's mode, for forwards that read self.training


class _ShapeTracer(BlockTracer):
    """Traces with shapes static except the batch, and `self.training` of the traced-through modules as a
    graph input (so `y_embedder(y, self.training)` follows the mode at run time; a Python branch on it
    cannot be traced)."""

    def __init__(self, leaves, root, inputs2: dict, inputs3: dict, traced: list[nn.Module]):
        super().__init__(leaves)
        memo = {}
        for t in list(root.parameters()) + list(root.buffers()):
            memo[id(t)] = torch.empty_like(t, device="meta")
        self.meta_root = _module_meta(root, memo)
        self.inputs = (dict(inputs2, **{_TRAINING: False}), dict(inputs3, **{_TRAINING: False}))
        self.vals: dict[fx.Node, tuple] = {}
        self.traced = traced

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        fn, args = super().create_args_for_root(root_fn, is_module, concrete_args)
        flag = self.create_proxy("placeholder", _TRAINING, (False,), {})
        for m in self.traced:
            m.training = flag
        return fn, args

    def proxy(self, node):
        return _ShapeProxy(node, self)

    def static_size(self, p):
        v = self.vals.get(p.node)
        if v is None or not isinstance(v[0], torch.Tensor):
            return None
        a, b = v[0].shape, v[1].shape
        if len(a) != len(b):
            return None
        if a == b:
            return a
        shape = super(_ShapeProxy, p).__getattr__("shape")  # a symbolic x.shape for the batch dims
        return tuple(x if x == y else shape[i] for i, (x, y) in enumerate(zip(a, b)))

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        if kind == "call_method" and target in ("size", "dim") and isinstance(args[0], fx.Proxy):
            s = self.static_size(args[0])
            if s is not None:
                if target == "dim":
                    return len(s)
                return s if len(args) == 1 else s[args[1]]
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if isinstance(p, fx.Proxy):
            v = [self._meta(i, kind, target, args, kwargs) for i in (0, 1)]
            if v[0] is not None and v[1] is not None:
                self.vals[p.node] = tuple(v)
        return p

    def _meta(self, i, kind, target, args, kwargs):
        """The op on meta tensors (batch 2 when i == 0, 3 when i == 1); None when unknown."""
        missing = []

        def val(a):
            if isinstance(a, fx.Proxy):
                v = self.vals.get(a.node)
                if v is None:
                    missing.append(a)
                    return None
                return v[i]
            if isinstance(a, torch.Tensor):  # a buffer fx passes by value (the graph reads it with get_attr)
                return torch.empty_like(a, device="meta")
            return a

        a = fx.node.map_aggregate(args, val)
        k = fx.node.map_aggregate(kwargs, val)
        if missing:
            return None
        try:
            with fx._symbolic_trace._maybe_revert_all_patches():
                if kind == "placeholder":
                    return self.inputs[i].get(target)
                if kind == "get_attr":
                    return operator.attrgetter(target)(self.meta_root)
                if kind == "call_function":
                    return target(*a, **k)
                if kind == "call_method":
                    return getattr(a[0], target)(*a[1:], **k)
                if kind == "call_module":
                    return self.meta_root.get_submodule(target)(*a, **k)
        except Exception:
            return None
        return None


def _split_modules(model, stacks: dict[str, nn.Module]):
    """(leaves, traced): every module that does not contain a block (the blocks included) is an opaque call
    in the graph; the model and the modules holding the block lists are traced through."""
    inner = set()
    for path in stacks:
        parts = path.split(".") if path else []
        inner |= {".".join(parts[:i]) for i in range(len(parts) + 1)}
    named = list(model.named_modules())
    return [m for p, m in named if p not in inner], [m for p, m in named if p in inner]


def _trace(model, stacks, inputs: _Inputs):
    """The block graph of `model`; returns (graph module, output rebuild info)."""
    modes = [(m, m.training) for m in model.modules()]
    before = set(model.__dict__)
    try:
        leaves, traced = _split_modules(model, stacks)
        tracer = _ShapeTracer({id(m) for m in leaves}, model, inputs.make(2), inputs.make(3), traced)
        graph = tracer.trace(model, concrete_args=inputs.concrete)
    except SprintcError:
        raise
    except Exception as e:
        raise TransformError(_fx_failure(model, e)) from None
    finally:
        for m, t in modes:
            m.training = t
        added = set(model.__dict__) - before
        consts = {k: model.__dict__.pop(k) for k in added}  # fx stores tensor constants on the root
    if consts:
        raise TransformError(f"{type(model).__name__}.forward creates tensors from Python values ({', '.join(sorted(consts))}); "
                             "sprintc keeps the model's attributes untouched, so move that tensor into a buffer or a submodule")
    gm = fx.GraphModule(model, graph, type(model).__name__)
    _tidy(gm, inputs)
    return gm, _single_output(gm, model)


def _trace_some(model, stacks, inputs: _Inputs):
    """Trace with every candidate list's blocks as leaves; if that fails, with one list at a time (a list
    that is no block stack, e.g. in a time embedder, makes its owner traced code instead of one call)."""
    try:
        return (*_trace(model, stacks, inputs), stacks)
    except TransformError as e:
        if len(stacks) < 2:
            raise
        first = e
    for path, m in sorted(stacks.items(), key=lambda kv: -len(kv[1])):
        try:
            return (*_trace(model, {path: m}, inputs), {path: m})
        except TransformError:
            continue
    raise first


def _tidy(gm, inputs: _Inputs):
    """Remove the placeholders of the parameters traced with fixed values (and fx's asserts on them: the
    installed forward checks those values itself, with a clearer message), and dead or repeated nodes."""
    g = gm.graph
    for n in list(g.nodes):
        if n.op == "call_function" and n.target in (torch._assert, fx._symbolic_trace._assert_is_none):
            g.erase_node(n)
    g.eliminate_dead_code()
    for n in list(g.nodes):
        if n.op == "placeholder" and n.target not in inputs.fed and not n.users:
            g.erase_node(n)
    first = {}  # fx makes a get_attr node per read of a buffer (`self.rope` in a loop): keep one
    for n in list(g.nodes):
        if n.op == "get_attr":
            if n.target in first:
                n.replace_all_uses_with(first[n.target])
                g.erase_node(n)
            else:
                first[n.target] = n
    gm.recompile()


def _single_output(gm, model):
    out = next(n for n in gm.graph.nodes if n.op == "output")
    leaves, spec = pytree.tree_flatten(out.args[0])
    idx = [i for i, v in enumerate(leaves) if isinstance(v, fx.Node)]
    if len(idx) != 1:
        raise TransformError(f"{type(model).__name__}.forward returns {len(idx)} tensors; sprintc.transform supports models "
                             "with one output tensor (wrap the model to return the prediction only)")
    if isinstance(out.args[0], fx.Node):
        return None
    out.args = (leaves[idx[0]],)
    gm.recompile()
    return spec, leaves, idx[0]


def _fx_failure(model, e) -> str:
    user = [f for f in traceback.extract_tb(e.__traceback__) if "/torch/" not in f.filename.replace("\\", "/")]
    where = f" at {user[-1].filename}:{user[-1].lineno} ({user[-1].line})" if user else ""
    return (f"torch.fx could not trace {type(model).__name__}.forward with the blocks as leaves: {type(e).__name__}: {first_line(e)}{where}. "
            "sprintc traces with static shapes (only the batch size is symbolic) and runs every module that holds no "
            "block as one opaque call, so the forward itself must be plain tensor code: no Python branches on tensor "
            "values or on self.training, no data-dependent shapes. To proceed: move that code into a submodule (it then "
            "runs as one opaque call), or wrap the model in a module whose forward calls the embedders, the blocks and the head")


# ------------------------------------------------------------------------------------------ the stack
def _candidates(model) -> dict[str, nn.Module]:
    """Lists (ModuleList / Sequential) of two or more blocks of one class, a block being a module with
    submodules (not a bare Linear), outermost only: a list inside another list's blocks is part of them."""
    found = {}
    for path, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2:
            if len({type(c) for c in m}) == 1 and any(True for _ in m[0].children()):
                found[path] = m
    return {p: m for p, m in found.items() if not any(p.startswith(q + ".") for q in found if q != p)}


def _named_stack(model, path: str) -> dict[str, nn.Module]:
    try:
        m = model.get_submodule(path)
    except AttributeError:
        cands = ", ".join(f"{p!r} ({len(m)} x {type(m[0]).__name__})" for p, m in _candidates(model).items()) or "none"
        raise TransformError(f"blocks={path!r}: {type(model).__name__} has no submodule {path!r}; lists of blocks in it: {cands}") from None
    if not isinstance(m, (nn.ModuleList, nn.Sequential)) or len(m) == 0:
        raise TransformError(f"blocks={path!r} is a {type(m).__name__}; expected the nn.ModuleList or nn.Sequential holding the blocks")
    kinds = sorted({type(c).__name__ for c in m})
    if len(kinds) > 1:
        raise TransformError(f"blocks={path!r} holds blocks of several classes ({', '.join(kinds)}); the stack must be identical blocks")
    return {path: m}


def _block_calls(gm, prefix):
    return [n for n in gm.graph.nodes if n.op == "call_module" and n.target.rpartition(".")[0] == prefix
            and n.target.rpartition(".")[2].isdigit()]


def _choose_stack(model, gm, stacks, inputs, named: bool):
    """The candidate list whose blocks the forward runs one after another on a (B, N, D) token stream."""
    cls = type(model).__name__
    try:
        shapes = run_meta(gm, **inputs.make(2)).shapes
    except Exception as e:
        where = re.search(r"call_module\[target=([\w.]+)\]", str(e))
        where = f" in {where.group(1)} ({type(model.get_submodule(where.group(1))).__name__})" if where else ""
        raise TransformError(f"shape propagation of {cls} on meta tensors failed{where}: {type(e).__name__}: {first_line(e)}. "
                             "sprintc runs the model without data to learn its shapes, so its modules must not read tensor "
                             "values (.item(), branches on values)") from None
    good, bad = {}, {}
    for prefix, stack in stacks.items():
        calls = _block_calls(gm, prefix)
        order = [int(n.target.rpartition(".")[2]) for n in calls]
        if order != list(range(len(stack))):
            bad[prefix] = f"the forward calls its blocks as {[f'{prefix}.{i}' for i in order] or 'never'}, not each once in order"
            continue
        why = None
        for a, b in zip(calls, calls[1:]):
            if not b.args or b.args[0] is not a:
                why = f"{b.target} does not take {a.target}'s output as its first input"
                break
        for n in calls:
            if why:
                break
            src = n.args[0] if n.args else None
            sin, sout = shapes.get(getattr(src, "name", None)), shapes.get(n.name)
            if not (isinstance(sin, tuple) and len(sin) == 3 and all(isinstance(d, int) for d in sin)):
                why = f"{n.target}'s first input is not a (batch, tokens, width) tensor (shape {sin})"
            elif sin != sout:
                why = f"the blocks are not shape-preserving: {n.target} maps {sin} to {sout}"
        if why:
            bad[prefix] = why
        else:
            good[prefix] = shapes[calls[0].args[0].name]
    if len(good) == 1:
        (prefix, shape), = good.items()
        return prefix, shape[1], shape[2]
    if good:
        listing = "; ".join(f"{p!r} ({len(stacks[p])} x {type(stacks[p][0]).__name__}, tokens {s[1]}, width {s[2]})" for p, s in good.items())
        raise TransformError(f"{cls} has several block stacks: {listing}. Choose one with sprintc.transform(model, blocks='...')")
    listing = "; ".join(f"{p!r}: {why}" for p, why in bad.items())
    raise TransformError(f"{cls}: no usable block stack{'' if named else ' found'}: {listing}")


# ------------------------------------------------------------------------------------------ tokens
def _null_class(model) -> int | None:
    """The null label of class-conditional models: an embedding table with num_classes + 1 rows (DiT's
    LabelEmbedder, diffusers' LabelEmbedding), the last row being the null class."""
    for m in model.modules():
        n = getattr(m, "num_classes", None)
        if isinstance(n, int) and n > 0:
            for c in m.children():
                if isinstance(c, nn.Embedding) and c.num_embeddings == n + 1:
                    return n
    return None


def _protected(model, protected, route_cfg, n_tokens, notes) -> tuple[int, ...]:
    if route_cfg is not None and route_cfg.protected:
        if protected is not None:
            raise TransformError("protected tokens given twice: in the route pass config and as protected=; give one")
        protected = list(route_cfg.protected)
    if protected is None:
        k = getattr(model, "num_prefix_tokens", 0)
        if isinstance(k, int) and k > 0:
            notes.append(f"{k} prefix token(s) protected (num_prefix_tokens)")
            return tuple(range(k))
        return ()
    if callable(protected):
        protected = protected(n_tokens)
    try:
        idx = tuple(sorted({int(i) for i in protected}))
    except (TypeError, ValueError):
        raise TransformError(f"protected: expected token indices (ints) or a function n_tokens -> indices, found {protected!r}") from None
    if idx and not 0 <= idx[0] <= idx[-1] < n_tokens:
        raise TransformError(f"protected: indices {_indices(idx)} are outside the {n_tokens} tokens the blocks see")
    return idx


def _grid(model, grid, routable, prefix, n_tokens, prot, notes) -> tuple[int, ...]:
    if grid is not None:
        if not (isinstance(grid, (tuple, list)) and 1 <= len(grid) <= 3 and all(isinstance(g, int) and g > 0 for g in grid)):
            raise TransformError(f"grid: expected (H, W) or (T, H, W) of positive ints, found {grid!r}")
        grid = tuple(grid)
    else:
        grid = next((g for g in (_embed_grid(model, p) for p, m in model.named_modules()
                                 if isinstance(m, (nn.Conv2d, nn.Conv3d)) and m.kernel_size == m.stride) if g), None)
        if grid is None:  # no patch embedding to ask: a square grid if the count is one, else a sequence
            side = math.isqrt(routable)
            grid = (side, side) if side * side == routable else (routable,)
            notes.append(f"grid {'x'.join(map(str, grid))} inferred from the {routable} routable tokens (pass grid= if wrong)")
    if math.prod(grid) != routable:
        extra = f" plus {len(prot)} protected" if prot else ""
        raise TransformError(f"grid {'x'.join(map(str, grid))} ({math.prod(grid)} tokens){extra} does not fit the model: the blocks "
                             f"{prefix}.* see {n_tokens} tokens" + ("" if prot else "; if some are class/register/text tokens, pass protected=[...]"))
    return grid


def _apply_filter(passes, filter_fn, stack, prefix):
    chosen = [i for i, b in enumerate(stack) if filter_fn(b, f"{prefix}.{i}")]
    if not chosen:
        raise TransformError(f"filter_fn matched none of the {len(stack)} blocks {prefix}.0 .. {prefix}.{len(stack) - 1}; "
                             "it is called as filter_fn(block, 'path.i') and should return True for the blocks to route")
    if chosen != list(range(chosen[0], chosen[-1] + 1)):
        raise TransformError(f"filter_fn matched blocks {', '.join(f'{prefix}.{i}' for i in chosen)}; the routed middle must be contiguous")
    if not any(p.name == "partition" for p in passes):
        raise TransformError("filter_fn chooses the middle blocks, which needs the partition pass in the config")
    return [p.model_copy(update={"middle": (chosen[0], chosen[-1] + 1)}) if p.name == "partition" else p for p in passes]


def _flops(gm, example, plan) -> int:
    """Forward FLOPs per sample from shape propagation (batch 2; routed when a plan is given)."""
    args, kwargs = example(2)
    names = {n.target for n in gm.graph.nodes if n.op == "placeholder"}
    if plan is not None and "ids_keep" in names:
        kwargs = dict(kwargs, ids_keep=routing.sample_ids(plan, 2))
    costs = run_meta(gm, *args, **kwargs).costs
    return sum(c.flops for c in costs.values()) // 2


# ------------------------------------------------------------------------------------------ runtime
class _State:
    """What the installed forward needs besides the graph: how calls map onto the graph's inputs, the
    values the other parameters were traced with, and the output structure to rebuild."""

    def __init__(self, inputs: _Inputs, out, null: int | None, takes_mode: bool):
        self.params = list(inputs.sig.parameters)[1:]
        self.fed, self.concrete, self.out, self.null_class = inputs.fed, inputs.concrete, out, null
        self.takes_mode = takes_mode

    def split(self, owner, args, kwargs):
        if len(args) > len(self.params):
            raise TypeError(f"{owner}.forward takes {len(self.params)} inputs, got {len(args)}")
        values = dict(zip(self.params, args))
        for k, v in kwargs.items():
            if k not in self.params:
                raise TypeError(f"{owner}.forward got an unexpected keyword argument {k!r}")
            if k in values:
                raise TypeError(f"{owner}.forward got multiple values for argument {k!r}")
            values[k] = v
        for k, traced in self.concrete.items():
            if k in values and not _same(values[k], traced):
                raise TransformError(f"{owner} was transformed with {k}={traced!r} fixed (it is traced with that value); "
                                     f"call it without {k} or with {k}={traced!r}")
        missing = [k for k in self.fed if k not in values]
        if missing:
            raise TypeError(f"{owner}.forward (transformed) needs {', '.join(self.fed)}; missing {', '.join(missing)}")
        return [values[k] for k in self.fed]

    def rebuild(self, y):
        if self.out is None:
            return y
        spec, leaves, i = self.out
        return pytree.tree_unflatten([y if j == i else v for j, v in enumerate(leaves)], spec)


def _same(a, b) -> bool:
    return a is b or (isinstance(a, (bool, int, float, str)) and type(a) is type(b) and a == b)


def _forward(self, *args, ids_keep=None, path_drop=None, middle_rows=None, **kwargs):
    st = self.sprint.transform
    fed = st.split(type(self).__name__, args, kwargs)
    mode = {_TRAINING: self.training} if st.takes_mode else {}
    return st.rebuild(routed_forward(self, *fed, ids_keep=ids_keep, path_drop=path_drop, middle_rows=middle_rows, **mode))


def _forward_guidance(self, *args, **kwargs):
    st = self.sprint.transform
    mode = {_TRAINING: self.training} if st.takes_mode else {}
    return st.rebuild(self.sprint.guidance_fn(self, *st.split(type(self).__name__, args, kwargs), **mode))


# ------------------------------------------------------------------------------------------ user models
def load_user_model(ref: str) -> nn.Module:
    """`package.module:factory` (or `path/to/file.py:factory`): import it, call the factory with no
    arguments, return the nn.Module. The model should follow the contract forward(x, t, y) -> prediction."""
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise TransformError(f"--model {ref!r}: expected package.module:factory (e.g. mypkg.models:dit_small)")
    modname, attr = ref.split(":")
    try:
        if modname.endswith(".py"):
            path = Path(modname)
            if not path.is_file():
                raise TransformError(f"--model {ref!r}: file {modname} not found")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            cwd = str(Path.cwd())  # a console script does not put the working directory on the path
            added = "" not in sys.path and cwd not in sys.path
            if added:
                sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(modname)
            finally:
                if added:
                    sys.path.remove(cwd)
    except TransformError:
        raise
    except ModuleNotFoundError as e:
        raise TransformError(f"--model {ref!r}: cannot import {modname}: {e} (is it installed or in the working directory?)") from None
    except Exception as e:
        raise TransformError(f"--model {ref!r}: importing {modname} failed: {type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        have = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise TransformError(f"--model {ref!r}: {modname} has no {attr!r}; callables in it: {', '.join(have) or 'none'}")
    if not callable(factory):
        raise TransformError(f"--model {ref!r}: {modname}.{attr} is a {type(factory).__name__}, not a factory function or class")
    try:
        model = factory()
    except Exception as e:
        raise TransformError(f"--model {ref!r}: {modname}.{attr}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise TransformError(f"--model {ref!r}: {modname}.{attr}() returned a {type(model).__name__}, not an nn.Module")
    return model

