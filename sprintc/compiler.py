"""spec -> model -> block graph -> passes -> a runnable model (its forward is the rewritten graph)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn

import sprintc.passes  # noqa: F401  (registers the passes)
from sprintc.graph import trace
from sprintc.model import DiT, LEAF_TYPES
from sprintc.pipeline import Context, install, run_pipeline
from sprintc.spec import Spec, load_spec


@dataclass
class Built:
    model: nn.Module
    graph_module: fx.GraphModule
    history: list[tuple[str, str]]
    ctx: Context
    spec: Spec


def example_inputs(spec: Spec, batch: int, device="cpu"):
    m = spec.model
    shape = (batch, m.input.channels, *((m.input.frames,) if m.input.frames else ()), m.input.size, m.input.size)
    x = torch.randn(shape, device=device)
    t = torch.rand(batch, device=device)
    y = torch.randint(0, max(m.num_classes, 1), (batch,), device=device) if m.num_classes else None
    return x, t, y


def trace_model(net: DiT) -> fx.GraphModule:
    leaves = [m for m in net.modules() if isinstance(m, LEAF_TYPES)]
    concrete = None if net.y_embedder is not None else {"y": None}
    return trace(net, leaves, concrete_args=concrete)


def compile_spec(spec, *, dump_after: str | None = None, device: str | torch.device = "cpu") -> Built:
    spec = load_spec(spec)
    # device="meta": shapes and FLOPs only (the build report), no weights allocated or initialised
    with torch.device("meta") if str(device) == "meta" else contextlib.nullcontext():
        net = DiT(spec.model)
    gm = trace_model(net)
    m = spec.model

    def example(batch):
        x, t, y = example_inputs(spec, batch)
        return ((x, t, y) if y is not None else (x, t)), {}

    ctx = Context(root=net, blocks="blocks", grid=m.grid, tokens=m.tokens, width=m.width, example=example,
                  null_class=m.num_classes > 0)
    gm, history = run_pipeline(gm, spec.passes, ctx, dump_after=dump_after)
    if spec.passes:
        install(net, gm, ctx)
    net.to(device)
    return Built(net, gm, history, ctx, spec)


def build(spec, **overrides) -> nn.Module:
    """The runnable model of a spec (path, preset name, dict or Spec). forward(x, t, y, ids_keep=None,
    path_drop=None); forward_guidance(x, t, y) on a [cond; uncond] batch when the spec has `pdg`."""
    return compile_spec(load_spec(spec, **overrides)).model
