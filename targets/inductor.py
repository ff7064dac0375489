"""inductor: torch.compile (Inductor) on the CPU or CUDA.

Regional (target.regional, the default): every block is compiled in place with
`block.compile(fullgraph=True, dynamic=False)`; the blocks share their code, so Dynamo compiles one graph
per distinct input shape (encoder/decoder on N tokens, middle on M kept tokens) and every other block
reuses it; `fullgraph=True` makes a graph break inside a block an error. Where the model has a block graph,
consecutive blocks run in groups of target.region_blocks (BlockGroup, shared the same way), so that Inductor fuses
across their boundaries, and the routing glue before the fusion (scatter, mask-token fill, path drop) is compiled
with the fusion. The embedders and the final layer are compiled like blocks; the gathers stay eager. Cold compile
cost is that of a few regions instead of the whole model, and Inductor's FX graph cache (on by default,
TORCHINDUCTOR_CACHE_DIR) makes later processes skip code generation.

Whole model (regional: false): the model's forward (and forward_guidance) are compiled as one graph
each, the glue fused into its neighbours, at the cost of compiling every block inline.

On CUDA (target.kernels, the default) the attentions' q/k RMSNorm + RoPE, and attention itself over sequences of at
most 64 tokens (the routed blocks), run as sprintc's own Triton kernels (sprintc/kernels.py) in training and sampling
steps, where they were measured faster than Inductor's code and cuDNN's attention; Inductor traces into them like its
own kernels, and a hash of their source is part of its cache keys. Also on CUDA: where no gradient is taken, the GELU
MLP's fc1 bias and GELU run in cuBLASLt's epilogue, and in sprintc's compiles row reductions up to PERSISTENT_ROWS wide
(XL's LayerNorms) are persistent, and (target.tuned_matmuls) each matmul Inductor leaves to torch's mm / addmm is
timed at compile time against cuBLASLt's candidates and runs on the fastest where it beats torch's call
(replace_matmuls, sprintc/cublaslt.py).

Shapes are static (dynamic=False): a new batch size compiles a new variant once (no automatic dynamic
shapes, which would give slower kernels); the recompile limit is raised so that training, fine-tuning
and sampling variants all fit.
"""
from __future__ import annotations

import operator
import os
import types
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn
from torch._inductor import config as inductor_config
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

import sprintc
from sprintc import cublaslt  # (registers sprintc::tuned_mm, which graphs read back from Inductor's cache call)
from sprintc.modulation import ModulationTable, modulation_linear
from sprintc.spec import TargetSpec
from sprintc.targets_api import Lowering, TargetError, wrap_forwards

RECOMPILE_LIMIT = 64
# the developer's switches, read when a graph is traced or its kernels are written (sprintc/kernels.py, and
# SPRINTC_PERSISTENT_ROWS and SPRINTC_LOOPED_SUMS below): part of Inductor's cache key
KERNEL_SWITCHES = ("SPRINTC_QK_BLOCKS", "SPRINTC_SHORT_ATTENTION", "SPRINTC_GELU_EPILOGUE", "SPRINTC_PERSISTENT_ROWS",
                   "SPRINTC_LOOPED_SUMS")
# Inductor holds a row reduction in registers (a persistent reduction: the row is read once) up to 1024 elements and
# loops over wider rows, reading them twice; DiT-XL's LayerNorms are 1152 wide. In sprintc's compiles on CUDA rows up to
# this width are persistent (docs/PERFORMANCE.md, session P). SPRINTC_PERSISTENT_ROWS=0: Inductor's own rule (A/B runs).
PERSISTENT_ROWS = 2048


def glue_regions() -> bool:
    """SPRINTC_GLUE_REGIONS=0 (a developer's switch for A/B runs): leave the routing glue before the fusion eager."""
    env = os.environ.get("SPRINTC_GLUE_REGIONS", "1")
    if env not in ("0", "1"):
        raise TargetError(f"SPRINTC_GLUE_REGIONS={env!r}: expected 0 or 1")
    return env == "1"


def persistent_rows() -> int:
    env = os.environ.get("SPRINTC_PERSISTENT_ROWS")
    if env is None:
        return PERSISTENT_ROWS
    if not env.isdigit():
        raise TargetError(f"SPRINTC_PERSISTENT_ROWS={env!r}: expected a whole number of elements (0: Inductor's own limit)")
    return int(env)


def looped_sums() -> bool:
    """SPRINTC_LOOPED_SUMS=0 (a developer's switch for A/B runs): Inductor's own choice for the reductions with its
    DEFAULT hint, such as the sums over a block's tokens per sample and channel (the modulation's and the gates'
    gradients), instead of looped ones."""
    env = os.environ.get("SPRINTC_LOOPED_SUMS", "1")
    if env not in ("0", "1"):
        raise TargetError(f"SPRINTC_LOOPED_SUMS={env!r}: expected 0 or 1")
    return env == "1"


def patch_persistent_reductions():
    """Patch Inductor's heuristic (once, in its class) so that in sprintc's compiles (those that carry the
    KernelsInCacheKey pass) row reductions of up to persistent_rows() elements are persistent, and (looped_sums())
    reductions Inductor gives its DEFAULT hint loop: the sums over a routed block's 64 tokens, 1152 elements apart, ran
    persistent at about 1.1 TB/s on an H100 where the looped ones over the dense blocks' 256 tokens reached 1.8 (session
    W's profile; session X measured the switch). A subclass passed as
    `inductor_choices_class` did not work: Inductor builds its heuristics object once per thread, at first use, so the
    subclass applied only where a sprintc compile came first (session P)."""
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint
    from torch._inductor.virtualized import V

    found = InductorChoices.__dict__["should_use_persistent_reduction"]
    base = found.__func__ if isinstance(found, staticmethod) else found
    if getattr(base, "sprintc", False):
        return

    def should_use_persistent_reduction(*args, **kwargs):
        persistent = base(*args, **kwargs)
        own = inductor_config.post_grad_custom_post_pass
        if not (isinstance(own, KernelsInCacheKey) and own.kernels):
            return persistent  # not a sprintc compile with target.kernels
        rest = [a for a in args if not isinstance(a, InductorChoices)]
        features = kwargs.get("features", rest[0] if rest else None)
        if persistent:  # multi-kernel times both kinds itself
            return bool(inductor_config.triton.multi_kernel) or not (
                features is not None and looped_sums() and features.get_reduction_hint() == ReductionHint.DEFAULT)
        cooperative = kwargs.get("cooperative_reduction", rest[1] if len(rest) > 1 else True)
        strict = getattr(features, "strict_sum_rblock", lambda: None)()
        if features is None or cooperative or strict is not None or not inductor_config.triton.persistent_reductions:
            return False
        return (features.get_reduction_hint() == ReductionHint.INNER
                and V.graph.sizevars.statically_known_leq(features.reduction_numel, persistent_rows()))

    should_use_persistent_reduction.sprintc = True
    wrapped = staticmethod(should_use_persistent_reduction) if isinstance(found, staticmethod) else should_use_persistent_reduction
    InductorChoices.should_use_persistent_reduction = wrapped


def block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The model's stacks of identical blocks: `model.blocks`, else every ModuleList of >= 2 children of
    one class (a user's model through sprintc.transform)."""
    if isinstance(getattr(model, "blocks", None), nn.ModuleList):
        return [("blocks", model.blocks)]
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(c) for c in m}) == 1:
            if not any(name.startswith(f"{n}.") for n, _ in out):
                out.append((name, m))
    return out


def head_types() -> tuple[type, ...]:
    from sprintc.model import FinalLayer, PatchEmbed, TimestepEmbedder
    from sprintc.passes.fuse import Fusion

    return (PatchEmbed, TimestepEmbedder, FinalLayer, Fusion)


class KernelsInCacheKey(CustomGraphPass):
    """sprintc's post-grad pass: with tuned_matmuls it puts tuned cuBLASLt matmuls in the graph (replace_matmuls), then
    runs the post-grad pass the user configured, if any. Its uuid puts a hash of sprintc/kernels.py and cublaslt.py
    into Inductor's cache keys: the AOTAutograd cache keys a graph by its custom ops' names, not their code, so without
    it a graph compiled with older kernels would be read back from the cache after the kernels change (seen in session
    J). `kernels` tells patch_persistent_reductions that the compile is one of target.kernels."""

    def __init__(self, then: CustomGraphPass | None = None, tuned_matmuls: bool = False, kernels: bool = True):
        self.then = then
        self.tuned_matmuls = tuned_matmuls
        self.kernels = kernels

    def __call__(self, graph):
        if self.tuned_matmuls:
            replace_matmuls(graph, cublaslt.tune_mm)
        if self.then is not None:
            self.then(graph)

    def uuid(self):
        # the developer's switches and the persistent-row limit too: they pick kernels and tiles when a graph is traced;
        # with tuned matmuls the chosen candidates hold for one kind of GPU and cuBLASLt
        switches = [os.environ.get(name, "") for name in KERNEL_SWITCHES]
        files = [str(Path(sprintc.__file__).with_name(f)) for f in ("kernels.py", "cublaslt.py")]
        own = (get_hash_for_files(tuple(files)), *switches, PERSISTENT_ROWS, self.kernels)
        if self.tuned_matmuls:
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            own += ("tuned_matmuls", cublaslt.TUNE_MARGIN, torch.version.cuda, *gpus)
        return own if self.then is None else (own, self.then.uuid())


def replace_matmuls(graph: fx.Graph, choose) -> int:
    """Put sprintc::tuned_mm in place of each 2-D aten mm / addmm (1-D bias, no scaling) for which
    choose(a, b, bias), given the nodes' example values, returns a cuBLASLt candidate's index; the number replaced."""
    aten = torch.ops.aten
    replaced = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.mm.default, aten.addmm.default) or node.kwargs:
            continue
        bias, a, b = node.args if node.target is aten.addmm.default else (None, *node.args)
        vals = [None if n is None else n.meta.get("val") for n in (a, b, bias)]
        if any(v is None for v in vals[:2]) or (bias is not None and vals[2] is None):
            continue
        candidate = choose(*vals)
        if candidate is None:
            continue
        with graph.inserting_before(node):
            tuned = graph.call_function(torch.ops.sprintc.tuned_mm.default, (a, b, bias, candidate))
        tuned.meta.update(node.meta)
        node.replace_all_uses_with(tuned)
        graph.erase_node(node)
        replaced += 1
    return replaced


def _cache_key_pass(tuned_matmuls: bool = False, kernels: bool = True) -> dict:
    """Inductor options that add KernelsInCacheKey, chained after a user's own post-grad pass. A pass that is a
    plain function already keeps Inductor from caching (it has no uuid): left alone."""
    user = inductor_config.post_grad_custom_post_pass
    if user is not None and not isinstance(user, CustomGraphPass):
        return {}
    return {"post_grad_custom_post_pass": KernelsInCacheKey(user, tuned_matmuls, kernels)}


def _options(target: TargetSpec) -> dict:
    import torch._inductor

    opts = {"fullgraph": True, "dynamic": False}
    mode_opts = torch._inductor.list_mode_options(target.mode)
    tuned = target.tuned_matmuls and torch.cuda.is_available()
    extra = _cache_key_pass(tuned, target.kernels) if target.kernels or tuned else {}
    if hasattr(inductor_config.triton, "mix_order_reduction"):
        # set either way: the default is on from torch 2.10, where it crashed our whole-model routed backward
        # (pytorch#178080) and gives wrong gradients for scale-shift tables (pytorch#193061, a silent error)
        extra["triton.mix_order_reduction"] = target.mix_order_reduction
    if hasattr(inductor_config.triton, "enable_pdl"):  # (Inductor itself leaves it out below compute capability 9.0)
        extra["triton.enable_pdl"] = target.pdl
    if target.tune:
        extra["coordinate_descent_tuning"] = True
    elif target.multi_kernel and not mode_opts.get("coordinate_descent_tuning"):
        # torch 2.11 failed to load such graphs from the FX graph cache in a later process (TypeError), so these
        # regions skip that cache; with tuning (tune, the max-autotune modes) it is left out, as tuned graphs are
        # worth caching (docs/PERFORMANCE.md, session F)
        extra.update({"triton.multi_kernel": 1, "fx_graph_cache": False})
    if extra:  # torch.compile takes a mode or options, not both: the mode's options plus ours
        opts["options"] = {**mode_opts, **extra}
    elif target.mode != "default":
        opts["mode"] = target.mode
    return opts


def _raise_limits():
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 16 * RECOMPILE_LIMIT)


class BlockGroup(nn.Module):
    """Consecutive blocks run as one compiled region (target.region_blocks). Not registered in the model (its blocks
    stay where they are, in the state dict once); the model's graphs call it instead of the blocks."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(blocks)

    def forward(self, x, *args, mods=None, **kwargs):
        for i, blk in enumerate(self.members):  # mods: each block's modulation (a ModulationTable's), or None
            x = blk(x, *args, **kwargs) if mods is None else blk(x, *args, mod=mods[i], **kwargs)
        return x


def _other_kwargs(n: fx.Node) -> dict:
    return {k: v for k, v in n.kwargs.items() if k != "mod"}


def _chains(graph: fx.Graph, block_of: dict[str, nn.Module]) -> list[list[fx.Node]]:
    """Runs of block calls where each block takes the previous one's output (its only use) and the same other inputs
    (each its own modulation, or none)."""
    runs = []
    for n in graph.nodes:
        if n.op != "call_module" or n.target not in block_of:
            continue
        prev = runs[-1][-1] if runs else None
        if (prev is not None and n.args and n.args[0] is prev and len(prev.users) == 1
                and n.args[1:] == prev.args[1:] and _other_kwargs(n) == _other_kwargs(prev)
                and ("mod" in n.kwargs) == ("mod" in prev.kwargs)):
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


def _glue_into(graph: fx.Graph, head: fx.Node) -> list[fx.Node]:
    """The routing glue (scatter, mask-token fill, path drop) computed only for `head`'s inputs, in graph order."""
    from sprintc import routing

    glue_fns = (routing.scatter_tokens, routing.drop_path, routing.cat_mask_half)
    region, grown = {head}, True
    while grown:
        grown = False
        for n in {a for r in region for a in r.all_input_nodes} - region:
            if n.op == "call_function" and n.target in glue_fns and all(u in region for u in n.users):
                region.add(n)
                grown = True
    return [n for n in graph.nodes if n in region and n is not head]


def _absorb_glue(graph: fx.Graph, model: nn.Module, head: fx.Node, name: str) -> bool:
    """Replace `head` (a compiled head module, e.g. the fusion) and the glue feeding it with one call of a
    GraphModule `name` kept in the model's __dict__, compiled as one region: no eager passes between regions."""
    glue = _glue_into(graph, head)
    if not glue:
        return False
    nodes = [*glue, head]
    outside = list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in nodes))
    sub = fx.Graph()
    env = {a: sub.placeholder(f"in_{i}") for i, a in enumerate(outside)}
    for n in nodes:
        env[n] = sub.node_copy(n, lambda a: env[a])
    sub.output(env[head])
    model.__dict__[name] = fx.GraphModule(model, sub)  # holds the head's module itself: the same weights
    with graph.inserting_before(head):  # after every input of the region
        call = graph.call_module(name, tuple(outside))
    head.replace_all_uses_with(call)
    for n in reversed(nodes):
        graph.erase_node(n)
    return True


def _group_runs(graph: fx.Graph, model: nn.Module, block_of: dict[str, nn.Module], size: int, groups: dict):
    """Replace each run of consecutive block calls by calls of BlockGroups of up to `size` blocks; `groups` maps a
    tuple of block names to the group's name in the model's __dict__ (one group for the same blocks in two graphs)."""
    for run in _chains(graph, block_of):
        for k in range(0, len(run) - 1, size):
            chunk = run[k : k + size]
            if len(chunk) < 2:
                continue
            key = tuple(n.target for n in chunk)
            if key not in groups:
                groups[key] = f"_sprintc_group_{len(groups)}"
                model.__dict__[groups[key]] = BlockGroup([block_of[t] for t in key])
            kwargs = _other_kwargs(chunk[0])
            if "mod" in chunk[0].kwargs:
                kwargs["mods"] = [n.kwargs["mod"] for n in chunk]
            with graph.inserting_before(chunk[0]):
                call = graph.call_module(groups[key], chunk[0].args, kwargs)
            chunk[-1].replace_all_uses_with(call)
            for n in reversed(chunk):
                graph.erase_node(n)


def _batch_modulations(graph: fx.Graph, model: nn.Module, block_of: dict[str, nn.Module], tables: dict):
    """Blocks (two or more) that read one conditioning node get their modulations (`mod=`) from one ModulationTable
    call before the first of them; `tables` maps the blocks' names to the table's name in the model's __dict__ (one
    table for the same blocks in two graphs)."""
    readers = {}
    for n in graph.nodes:
        if (n.op == "call_module" and n.target in block_of and len(n.args) >= 2 and isinstance(n.args[1], fx.Node)
                and "mod" not in n.kwargs and modulation_linear(block_of[n.target]) is not None):
            readers.setdefault(n.args[1], []).append(n)
    for cond, blocks in readers.items():
        if len(blocks) < 2:
            continue
        key = tuple(n.target for n in blocks)
        if key not in tables:
            tables[key] = f"_sprintc_modulation_{len(tables)}"
            model.__dict__[tables[key]] = ModulationTable([modulation_linear(block_of[t]) for t in key])
        with graph.inserting_before(blocks[0]):
            table = graph.call_module(tables[key], (cond,))
            mods = [graph.call_function(operator.getitem, (table, i)) for i in range(len(blocks))]
        for n, mod in zip(blocks, mods):
            n.update_kwarg("mod", mod)


def regroup(model: nn.Module, size: int, glue: bool = True, modulation: bool = False) -> list[str]:
    """Rewrite the model's installed graphs into larger regions: runs of consecutive blocks called in groups of up to
    `size` (BlockGroup), and with `glue` the routing glue before the fusion compiled with it; with `modulation` the
    blocks' adaLN modulations computed together (ModulationTable, eager). The regions and tables are kept in the
    model's __dict__ (deep copies carry them, the state dict does not); the regions' names, none where the model has
    no installed graph."""
    sprint = getattr(model, "sprint", None)
    if (size < 2 and not glue and not modulation) or getattr(sprint, "graph", None) is None:
        return []
    from sprintc.graph import compile_forward

    block_of = {f"{name}.{i}": blk for name, blocks in block_lists(model) for i, blk in enumerate(blocks)}
    heads, groups, glued, tables = head_types(), {}, 0, {}
    for attr, graph in (("graph_fn", sprint.graph), ("guidance_fn", sprint.guidance_graph)):
        if graph is None:
            continue
        new = fx.Graph()
        new.output(new.graph_copy(graph, {}))
        if modulation:
            _batch_modulations(new, model, block_of, tables)
        if size > 1:
            _group_runs(new, model, block_of, size, groups)
        for n in list(new.nodes) if glue else []:
            if (n.op == "call_module" and n.target not in block_of and not n.target.startswith("_sprintc_")
                    and isinstance(model.get_submodule(n.target), heads)
                    and _absorb_glue(new, model, n, f"_sprintc_glue_{glued}")):
                glued += 1
        new.lint()
        setattr(sprint, attr, compile_forward(new, model))
    return [*groups.values(), *(f"_sprintc_glue_{i}" for i in range(glued))]


def compile_regions(model: nn.Module, target: TargetSpec) -> list[str]:
    opts = _options(target)
    done, in_blocks = [], set()
    grouped = set()
    for name in regroup(model, target.region_blocks, glue_regions(), target.batch_modulation):
        region = model.__dict__[name]
        region.compile(**opts)
        done.append(name)
        if isinstance(region, BlockGroup):
            grouped.update(id(b) for b in region.members)
    for name, blocks in block_lists(model):
        for i, blk in enumerate(blocks):
            in_blocks.update(id(m) for m in blk.modules())
            if id(blk) not in grouped:
                blk.compile(**opts)
                done.append(f"{name}.{i}")
    heads = head_types()
    for name, m in model.named_modules():
        if isinstance(m, heads) and id(m) not in in_blocks:
            m.compile(**opts)
            done.append(name)
    return done


def compile_whole(model: nn.Module, target: TargetSpec) -> list[str]:
    opts = {k: v for k, v in _options(target).items() if k != "fullgraph"}  # sampling ids may break the graph
    fwd = model.__dict__.get("forward")
    fn = fwd.__func__ if isinstance(fwd, types.MethodType) else type(model).forward
    model.__dict__["forward"] = types.MethodType(torch.compile(fn, **opts), model)
    g = model.__dict__.get("forward_guidance")
    if isinstance(g, types.MethodType):
        model.__dict__["forward_guidance"] = types.MethodType(torch.compile(g.__func__, **opts), model)
    return [""]


def use_kernels(model: nn.Module) -> int:
    """sprintc's Triton kernels (sprintc/kernels.py) in the model's attentions; 0 where triton is missing."""
    try:
        from sprintc.kernels import attention_from_env, gelu_epilogue_from_env, tiles_from_env, use_kernels
    except ImportError:  # a torch build without triton: Inductor's code throughout
        return 0
    try:
        tiles_from_env()  # checked here: at trace time a bad value would end in a compiler traceback
        attention_from_env()
        gelu_epilogue_from_env()
        persistent_rows()
        looped_sums()
    except ValueError as e:
        raise TargetError(str(e)) from None
    return use_kernels(model)


def lower(model: nn.Module, target: TargetSpec, device: torch.device, dtype: torch.dtype) -> nn.Module:
    _raise_limits()
    if device.type == "cuda" and target.kernels:
        use_kernels(model)
        patch_persistent_reductions()
    regions = compile_regions(model, target) if target.regional else compile_whole(model, target)
    wrap_forwards(model, Lowering(target, device, dtype, regions=regions))
    return model
