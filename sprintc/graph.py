"""The block graph: a torch.fx graph whose nodes are whole blocks, embedders, heads and small glue ops.

Also: shape propagation on meta tensors (the verifier's and the report's), FLOP and parameter counts per
node, and a networkx view.
"""
from __future__ import annotations

import types
from dataclasses import dataclass

import networkx as nx
import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sprintc.errors import PassError


class BlockTracer(fx.Tracer):
    """Symbolic tracer that stops at the given modules (the blocks and the embedders)."""

    def __init__(self, leaves: set[int]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


def trace(root: nn.Module, leaves, concrete_args: dict | None = None) -> fx.GraphModule:
    tracer = BlockTracer({id(m) for m in leaves})
    graph = tracer.trace(root, concrete_args=concrete_args)
    return fx.GraphModule(root, graph, root.__class__.__name__)


def block_nodes(gm: fx.GraphModule, prefix: str) -> list[fx.Node]:
    """The call_module nodes of the block stack `prefix` (e.g. "blocks"), in execution order."""
    nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target.rsplit(".", 1)[0] == prefix
             and n.target.rsplit(".", 1)[-1].isdigit()]
    for a, b in zip(nodes, nodes[1:]):
        if b.args[0] is not a:
            raise PassError(f"block {b.target} does not take block {a.target}'s output as its first input; "
                            "the blocks must run one after another on the token stream")
    return nodes


def compile_forward(graph: fx.Graph, root: nn.Module):
    """The graph's Python code as a function to bind to `root` (so it reads root's live attributes)."""
    code = graph.python_code(root_module="self")
    namespace = dict(code.globals)
    exec(compile(code.src, f"<sprintc graph {root.__class__.__name__}>", "exec"), namespace)
    return namespace["forward"]


def bind(fn, module):
    return types.MethodType(fn, module)


# ------------------------------------------------------------------------------- shapes & flops
@dataclass
class NodeCost:
    flops: int = 0
    params: int = 0


def _to_meta(v):
    if isinstance(v, torch.Tensor):
        return torch.empty_like(v, device="meta")
    if isinstance(v, (list, tuple)):
        return type(v)(_to_meta(x) for x in v)
    if isinstance(v, dict):
        return {k: _to_meta(x) for k, x in v.items()}
    return v


class MetaInterpreter(fx.Interpreter):
    """Runs the graph on meta tensors (no compute, no memory): records each node's output shape and
    the FLOPs of each call (FlopCounterMode), so costs come from the ops actually run.

    Blocks of a stack are identical, so a module call is run once per (module structure, input
    shapes) and its result reused: a 28-block graph costs about as much as a 2-block one."""

    _memo: dict = {}

    def __init__(self, gm: fx.GraphModule, count_flops: bool = True):
        super().__init__(gm)
        self.count_flops = count_flops
        self.costs: dict[str, NodeCost] = {}
        self.shapes: dict[str, object] = {}

    def call_module(self, target, args, kwargs):
        mod = self.fetch_attr(target)
        key = _call_key(mod, args, kwargs)
        hit = self._memo.get(key) if key is not None else None
        if hit is not None:
            shape, dtype, flops = hit
            self._flops = flops
            return torch.empty(shape, dtype=dtype, device="meta")
        with FlopCounterMode(display=False) as fc:
            out = super().call_module(target, args, kwargs)
        self._flops = fc.get_total_flops()
        if key is not None and isinstance(out, torch.Tensor):
            self._memo[key] = (tuple(out.shape), out.dtype, self._flops)
        return out

    def run_node(self, n):
        self._flops = 0
        if n.op == "call_module" or not self.count_flops:
            out = super().run_node(n)
        else:
            with FlopCounterMode(display=False) as fc:
                out = super().run_node(n)
            self._flops = fc.get_total_flops()
        params = 0
        if n.op == "call_module":
            params = sum(p.numel() for p in self.module.get_submodule(n.target).parameters())
        self.costs[n.name] = NodeCost(self._flops, params)
        self.shapes[n.name] = n.meta["shape"] = _shape(out)
        return out


def _call_key(mod: nn.Module, args, kwargs):
    """What a module call's output shape and FLOPs depend on: its code, its structure and parameter
    shapes, and the shapes/dtypes of its inputs. None when an input is not a tensor or a constant."""
    def sig(v):
        if isinstance(v, torch.Tensor):
            return ("T", tuple(v.shape), v.dtype)
        if v is None or isinstance(v, (int, float, bool, str)):
            return v
        raise TypeError
    try:
        inputs = tuple(sig(a) for a in args) + tuple((k, sig(v)) for k, v in sorted(kwargs.items()))
    except TypeError:
        return None
    structure = tuple((name, type(m)) for name, m in mod.named_modules())
    params = tuple((name, tuple(p.shape), p.dtype) for name, p in [*mod.named_parameters(), *mod.named_buffers()])
    flags = tuple(sorted((k, v) for k, v in vars(mod).items() if isinstance(v, (int, float, bool, str, tuple))))
    return (type(mod), structure, params, flags, inputs)


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one real call (FlopCounterMode). Attention runs on the math kernel, whose FLOPs are
    counted on every device (CPU's fused attention kernel is not counted)."""
    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        fn(*args, **kwargs)
    return fc.get_total_flops()


def _shape(v):
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, torch.Size):  # the value of an `x.shape` node: a shape, not a tensor
        return None
    if isinstance(v, (list, tuple)):
        return type(v)(_shape(x) for x in v)
    return None


def run_meta(gm: fx.GraphModule, *args, count_flops: bool = True, **kwargs) -> MetaInterpreter:
    """Shape-propagate on the meta device. The module's parameters are moved to meta on a shallow
    copy, so the real weights are untouched."""
    meta_gm = _meta_copy(gm)
    interp = MetaInterpreter(meta_gm, count_flops)
    # kwargs -> positional in placeholder order (fx.Interpreter.run takes positionals)
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    full = list(args) + [kwargs.get(nm, _default(gm, nm)) for nm in names[len(args):]]
    interp.run(*[_to_meta(a) for a in full])
    return interp


def _default(gm, name):
    node = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.target == name)
    return node.args[0] if node.args else None


def _meta_copy(gm: fx.GraphModule) -> fx.GraphModule:
    memo = {}
    for name, p in list(gm.named_parameters()) + list(gm.named_buffers()):
        memo[id(p)] = torch.empty_like(p, device="meta")
    copy = fx.GraphModule.__new__(type(gm))
    copy.__dict__ = dict(gm.__dict__)
    copy._modules = {k: _module_meta(v, memo) for k, v in gm._modules.items()}
    copy._parameters = {k: (memo[id(v)] if v is not None else None) for k, v in gm._parameters.items()}
    copy._buffers = {k: (memo[id(v)] if v is not None else None) for k, v in gm._buffers.items()}
    return copy


def _module_meta(m: nn.Module | None, memo):
    if m is None:
        return None
    c = m.__class__.__new__(m.__class__)
    c.__dict__ = dict(m.__dict__)
    c._parameters = {k: (memo.get(id(v), v) if v is not None else None) for k, v in m._parameters.items()}
    c._buffers = {k: (memo.get(id(v), v) if v is not None else None) for k, v in m._buffers.items()}
    c._modules = {k: _module_meta(v, memo) for k, v in m._modules.items()}
    return c


def to_networkx(graph: fx.Graph) -> nx.DiGraph:
    g = nx.DiGraph()
    for n in graph.nodes:
        g.add_node(n.name, op=n.op, target=str(n.target), stage=n.meta.get("stage", ""))
        for inp in n.all_input_nodes:
            g.add_edge(inp.name, n.name)
    return g


def to_dot(graph: fx.Graph) -> str:
    colors = {"encoder": "lightblue", "middle": "orange", "decoder": "lightgreen"}
    lines = ["digraph G {", "  rankdir=TB; node [shape=box, style=filled, fillcolor=white];"]
    for n in graph.nodes:
        shape = n.meta.get("shape")
        label = f"{n.name}\\n{n.target if n.op != 'call_function' else getattr(n.target, '__name__', n.target)}"
        if shape:
            label += f"\\n{shape}"
        color = colors.get(n.meta.get("stage"), "white")
        lines.append(f'  "{n.name}" [label="{label}", fillcolor={color}];')
        for inp in n.all_input_nodes:
            lines.append(f'  "{inp.name}" -> "{n.name}";')
    lines.append("}")
    return "\n".join(lines)
