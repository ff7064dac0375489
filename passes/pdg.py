"""pdg: builds the path-drop guidance graph. Its batch is [conditional; unconditional]: the encoder runs on
both halves, the middle blocks on the conditional half only, the unconditional half's middle output is the
mask token everywhere; fusion and decoder run on both. The guidance sum itself is the sampler's."""
import torch.fx as fx

from sprintc import routing
from sprintc.pipeline import PassResult, insert_after, mask_node, register, role_node, stage_nodes


@register("pdg", requires=("partition",), after=("route", "path_drop", "fuse"))
def pdg(gm, cfg, ctx):
    if not ctx.null_class:
        raise ValueError("the model has no null class (num_classes: 0), so it has no unconditional half to guide with")
    shapes2, shapes3 = ctx.shapes(gm, 2), ctx.shapes(gm, 3)
    g = fx.Graph()
    g.output(g.graph_copy(gm.graph, {}))
    mids = stage_nodes(g, "middle")
    region = set(mids)
    for n in list(g.nodes):  # the route's gathers belong to the middle region too
        if n.target is routing.gather_tokens and any(u in region for u in n.users):
            region.add(n)
    halves = {}
    for node in list(region):
        for a in list(node.all_input_nodes):
            if a in region or a.op == "call_module" and a.target == "sprint" or a.op == "placeholder" and a.target == "ids_keep":
                continue
            s2, s3 = shapes2.get(a.name), shapes3.get(a.name)
            if not (isinstance(s2, tuple) and s2 and s2[0] != s3[0]):
                continue  # not per-sample (e.g. RoPE angles shared by the batch)
            if a not in halves:
                with g.inserting_after(a):
                    halves[a] = g.call_function(routing.first_half, (a,))
            node.replace_input_with(a, halves[a])
    m = role_node(g, "middle_out")
    mask = mask_node(g, mids[0], gm, ctx)
    # the middle output as it leaves the middle region (before path drop and fusion)
    last = mids[-1]
    after = next((u for u in last.users if u.target is routing.scatter_tokens), last)
    h = insert_after(after, routing.cat_mask_half, (after, mask))
    if after is m:
        h.meta["role"] = m.meta.pop("role")
    ctx.guidance = g
    return PassResult(gm, False)
