"""Pass infrastructure: the pass registry, ordering (networkx), the verifier, and installing the rewritten
graph as the module's forward.

A pass is a function (gm, config, ctx) -> PassResult that edits the block graph. It declares what it
requires and what it should run after; the pipeline orders the passes a spec lists and runs the verifier
after each one (shape propagation on meta tensors plus the invariants of DESIGN.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import networkx as nx
import torch
import torch.fx as fx
import torch.nn as nn

from sprintc import routing
from sprintc.errors import PassError
from sprintc.graph import bind, compile_forward, run_meta


@dataclass
class PassResult:
    graph_module: fx.GraphModule
    modified: bool


@dataclass
class PassInfo:
    name: str
    run: Callable
    requires: tuple[str, ...] = ()
    after: tuple[str, ...] = ()  # run after these when they are present


REGISTRY: dict[str, PassInfo] = {}


def register(name, requires=(), after=()):
    def deco(fn):
        REGISTRY[name] = PassInfo(name, fn, tuple(requires), tuple(after))
        return fn
    return deco


class SprintModules(nn.Module):
    """The parameters the passes add, under their own prefix (`sprint.`): the mask token and the fusion.
    Calling it returns the mask token (the graph reads it through a call_module node)."""

    def __init__(self, width: int):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.fuse: nn.Module | None = None
        # runtime state (not parameters): set by install()
        self.plan: routing.RoutePlan | None = None
        self.path_drop_p = 0.0
        self.path_drop_skip = False  # dropped samples skip the middle blocks (path_drop's skip_middle)
        self.routing = True  # False during full-token fine-tuning
        self.generator: torch.Generator | None = None
        self.graph: fx.Graph | None = None  # the rewritten graph and the PDG graph
        self.guidance_graph: fx.Graph | None = None

    def forward(self):
        return self.mask_token


@dataclass
class Context:
    """What passes know about the model besides its graph."""

    root: nn.Module
    blocks: str                       # qualified name of the block list, e.g. "blocks"
    grid: tuple[int, ...]             # routable token grid
    tokens: int                       # N, all tokens the blocks see (protected included)
    width: int
    example: Callable[[int], tuple]   # batch size -> (args, kwargs) of the original forward
    null_class: bool = True
    protected: tuple[int, ...] = ()
    plan: routing.RoutePlan | None = None
    path_drop_p: float = 0.0
    path_drop_skip: bool = False
    guidance: fx.Graph | None = None
    applied: list[str] = field(default_factory=list)

    @property
    def sprint(self) -> SprintModules:
        if not hasattr(self.root, "sprint"):
            self.root.sprint = SprintModules(self.width)
        return self.root.sprint

    def inputs(self, gm: fx.GraphModule, batch: int, guidance=False) -> tuple[tuple, dict]:
        args, kwargs = self.example(2 * batch if guidance else batch)
        kwargs = dict(kwargs)
        names = {n.target for n in gm.graph.nodes if n.op == "placeholder"}
        if "ids_keep" in names and self.plan is not None and not guidance:
            kwargs["ids_keep"] = routing.sample_ids(self.plan, batch)
        if "path_drop" in names and not guidance:
            kwargs["path_drop"] = torch.zeros(batch, dtype=torch.bool)
        if "middle_rows" in names and not guidance and self.path_drop_p > 0:  # the rows a training step keeps
            kwargs["path_drop"], rows = routing.draw_path_drop(self.path_drop_p, batch, self.path_drop_skip,
                                                               generator=torch.Generator().manual_seed(0))
            kwargs["middle_rows"] = None if rows is None else rows[0]
        return args, kwargs

    def shapes(self, gm: fx.GraphModule, batch: int = 2) -> dict[str, tuple]:
        args, kwargs = self.inputs(gm, batch)
        return run_meta(gm, *args, count_flops=False, **kwargs).shapes


def stage_nodes(graph: fx.Graph, stage: str) -> list[fx.Node]:
    return [n for n in graph.nodes if n.meta.get("stage") == stage]


def middle_region(graph: fx.Graph) -> set[fx.Node]:
    """The middle blocks and the route's gathers that feed them."""
    region = set(stage_nodes(graph, "middle"))
    for n in list(graph.nodes):
        if n.target is routing.gather_tokens and any(u in region for u in n.users):
            region.add(n)
    return region


def wrap_sample_inputs(graph: fx.Graph, region: set[fx.Node], shapes2: dict, shapes3: dict, make: Callable,
                       keep: Callable = lambda a: False) -> dict[fx.Node, fx.Node]:
    """Feed `region` make(a) instead of each input `a` that holds one entry per sample (its first dim follows the
    batch size: shapes2 / shapes3 are the node shapes at batch 2 and 3), except where keep(a). make(a) is called once
    per input, with the graph inserting right after `a` (after the last input if `a` is one). Returns {input: its
    replacement}."""
    made = {}
    for node in [n for n in graph.nodes if n in region]:
        for a in list(node.all_input_nodes):
            if a in region or keep(a):
                continue
            s2, s3 = shapes2.get(a.name), shapes3.get(a.name)
            if not (isinstance(s2, tuple) and s2 and s2[0] != s3[0]):
                continue  # not per-sample (e.g. RoPE angles shared by the batch)
            if a not in made:  # a graph input: after all of them (make may read a later one)
                at = a if a.op != "placeholder" else [n for n in graph.nodes if n.op == "placeholder"][-1]
                with graph.inserting_after(at):
                    made[a] = make(a)
            node.replace_input_with(a, made[a])
    return made


def role_node(graph: fx.Graph, role: str) -> fx.Node:
    nodes = [n for n in graph.nodes if n.meta.get("role") == role]
    if len(nodes) != 1:
        raise PassError(f"the graph has {len(nodes)} nodes marked {role!r}; expected one (was partition applied?)")
    return nodes[0]


def move_role(old: fx.Node, new: fx.Node):
    new.meta["role"] = old.meta.pop("role")


def add_placeholder(graph: fx.Graph, name: str) -> fx.Node:
    """A new optional input (default None) after the existing ones."""
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(last):
        return graph.placeholder(name, default_value=None)


def insert_after(node: fx.Node, target, args, kind="call_function", replace_uses=True) -> fx.Node:
    graph = node.graph
    with graph.inserting_after(node):
        new = graph.call_function(target, args) if kind == "call_function" else graph.call_module(target, args)
    if replace_uses:
        node.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
    return new


def mask_node(graph: fx.Graph, before: fx.Node, gm: fx.GraphModule | None = None, ctx: "Context | None" = None) -> fx.Node:
    """The node that reads the mask token (`sprint()`), placed before `before`."""
    if gm is not None and ctx is not None and "sprint" not in gm._modules:
        gm.add_submodule("sprint", ctx.sprint)
    existing = [n for n in graph.nodes if n.op == "call_module" and n.target == "sprint"]
    if existing and _precedes(existing[0], before):
        return existing[0]
    first = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first):
        return graph.call_module("sprint", ())


def _precedes(a: fx.Node, b: fx.Node) -> bool:
    for n in a.graph.nodes:
        if n is a:
            return True
        if n is b:
            return False
    return False


# ------------------------------------------------------------------------------------- ordering
def order_passes(specs: list) -> list:
    names = [s.name for s in specs]
    for s in specs:
        if s.name not in REGISTRY:
            raise PassError(f"passes: unknown pass {s.name!r}; known: {', '.join(REGISTRY)}")
    g = nx.DiGraph()
    g.add_nodes_from(names)
    for n in names:
        info = REGISTRY[n]
        for r in info.requires:
            if r not in names:
                raise PassError(f"passes: {n} requires the {r} pass; add `- name: {r}` to passes")
            g.add_edge(r, n)
        for a in info.after:
            if a in names:
                g.add_edge(a, n)
    try:
        order = list(nx.lexicographical_topological_sort(g, key=names.index))
    except nx.NetworkXUnfeasible:
        raise PassError(f"passes: no order satisfies the requirements of {names}") from None
    by_name = {s.name: s for s in specs}
    return [by_name[n] for n in order]


# ------------------------------------------------------------------------------------- verifier
def verify(gm: fx.GraphModule, ctx: Context, dense_out: tuple, after: str):
    gm.graph.lint()
    for n in gm.graph.nodes:
        if n.op not in ("placeholder", "output") and not n.users and n.target is not routing.gather_tokens:
            raise PassError(f"verifier after {after}: node {n.name} ({n.target}) is dead (its result is unused)")
    gathers = [n for n in gm.graph.nodes if n.target is routing.gather_tokens and n.meta.get("stream")]
    scatters = [n for n in gm.graph.nodes if n.target is routing.scatter_tokens]
    if len(gathers) != len(scatters):
        raise PassError(f"verifier after {after}: routed region not closed ({len(gathers)} gathers, {len(scatters)} scatters)")
    rows = any(n.op == "placeholder" and n.target == "middle_rows" for n in gm.graph.nodes)
    for batch in (2, 3):
        args, kwargs = ctx.inputs(gm, batch)
        if rows:  # the middle on all samples but the first
            kwargs["middle_rows"] = torch.arange(1, batch)
        out = run_meta(gm, *args, count_flops=False, **kwargs).shapes["output"]
        want = (batch, *dense_out[1:])
        if tuple(out) != want:
            raise PassError(f"verifier after {after}: output shape {tuple(out)} differs from the dense model's {want}")
    if ctx.guidance is not None:
        gg = fx.GraphModule(gm, ctx.guidance)
        args, kwargs = ctx.inputs(gg, 2, guidance=True)
        out = run_meta(gg, *args, count_flops=False, **kwargs).shapes["output"]
        if tuple(out) != (4, *dense_out[1:]):
            raise PassError(f"verifier after {after}: guidance graph output {tuple(out)} is not the dense shape {(4, *dense_out[1:])}")


def run_pipeline(gm: fx.GraphModule, pass_specs: list, ctx: Context, dump_after: str | None = None):
    """Apply the passes in dependency order, verifying after each. Returns (gm, history) where history
    lists (pass name, graph code after it)."""
    args, kwargs = ctx.example(2)
    dense_out = run_meta(gm, *args, count_flops=False, **kwargs).shapes["output"]
    history = [("trace", gm.code)]
    for spec in order_passes(pass_specs):
        info = REGISTRY[spec.name]
        try:
            res = info.run(gm, spec, ctx)
        except ValueError as e:
            raise PassError(f"passes.{spec.name}: {e}") from None
        gm = res.graph_module
        gm.recompile()
        verify(gm, ctx, dense_out, spec.name)
        ctx.applied.append(spec.name)
        history.append((spec.name, gm.code))
    if dump_after and dump_after not in [h[0] for h in history]:
        raise PassError(f"--dump-after {dump_after}: no such pass ran; ran: {', '.join(h[0] for h in history)}")
    return gm, history


# ------------------------------------------------------------------------------------- install
def install(root: nn.Module, gm: fx.GraphModule, ctx: Context):
    """Make `root` run the rewritten graph: root.forward routes (sampling ids and path-drop decisions
    from the runtime's generator when not given), root.forward_guidance runs the PDG graph."""
    sprint = ctx.sprint
    sprint.plan, sprint.path_drop_p, sprint.path_drop_skip = ctx.plan, ctx.path_drop_p, ctx.path_drop_skip
    sprint.graph_code = gm.code
    sprint.graph, sprint.guidance_graph = gm.graph, ctx.guidance  # (what targets/inductor.py regroups)
    sprint.graph_fn = compile_forward(gm.graph, root)
    sprint.guidance_fn = compile_forward(ctx.guidance, root) if ctx.guidance is not None else None
    sprint.applied = list(ctx.applied)
    staged = [n.meta["stage"] for n in gm.graph.nodes if n.op == "call_module" and "stage" in n.meta]
    sprint.stages = tuple(staged.count(s) for s in ("encoder", "middle", "decoder")) if staged else None
    root.__dict__["forward"] = bind(routed_forward, root)
    if sprint.guidance_fn is not None:
        root.__dict__["forward_guidance"] = bind(guidance_forward, root)


def routed_forward(self, *args, ids_keep=None, path_drop=None, middle_rows=None, **kwargs):
    """Training: sample the kept tokens and the path-drop mask (and with path_drop's skip_middle the samples the middle
    runs on) unless given; randomness is the runtime's: `self.sprint.generator`. Evaluation: dense, unless ids_keep
    is passed explicitly. Given path_drop alone, every sample runs the middle blocks."""
    s = self.sprint
    x = args[0] if args else next(iter(kwargs.values()))
    batch, device = x.shape[0], x.device
    extra = {}
    if s.plan is not None:
        if ids_keep is None and self.training and s.routing and s.plan.keep < s.plan.routable:
            ids_keep = routing.sample_ids(s.plan, batch, device, s.generator)
        extra["ids_keep"] = ids_keep
    names = s.graph_fn.__code__.co_varnames
    if "path_drop" in names:
        if path_drop is None and self.training and s.routing and s.path_drop_p > 0:
            skip = s.path_drop_skip and middle_rows is None  # rows given: theirs
            path_drop, rows = routing.draw_path_drop(s.path_drop_p, batch, skip, device, s.generator)
            middle_rows = middle_rows if rows is None else rows[0]
        extra["path_drop"] = path_drop
    if "middle_rows" in names:
        extra["middle_rows"] = middle_rows
    elif middle_rows is not None:
        raise TypeError("middle_rows: this model's path_drop pass runs every sample through the middle (skip_middle: false)")
    return s.graph_fn(self, *args, **kwargs, **extra)


def guidance_forward(self, *args, **kwargs):
    """The PDG graph on a [conditional; unconditional] batch: the middle blocks run on the first half only."""
    return self.sprint.guidance_fn(self, *args, **kwargs)


def uninstall(root: nn.Module):
    root.__dict__.pop("forward", None)
    root.__dict__.pop("forward_guidance", None)
    if "sprint" in root._modules:
        del root._modules["sprint"]
