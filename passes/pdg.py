"""pdg: builds the path-drop guidance graph. Its batch is [conditional; unconditional]: the encoder runs on
both halves, the middle blocks on the conditional half only, the unconditional half's middle output is the
mask token everywhere; fusion and decoder run on both. The guidance sum itself is the sampler's."""
import torch.fx as fx

from sprintc import routing
from sprintc.pipeline import (PassResult, insert_after, mask_node, middle_region, register, role_node, stage_nodes,
                              wrap_sample_inputs)


@register("pdg", requires=("partition",), after=("route", "path_drop", "fuse"))
def pdg(gm, cfg, ctx):
    if not ctx.null_class:
        raise ValueError("the model has no null class (num_classes: 0), so it has no unconditional half to guide with")
    shapes2, shapes3 = ctx.shapes(gm, 2), ctx.shapes(gm, 3)
    g = fx.Graph()
    g.output(g.graph_copy(gm.graph, {}))
    for n in list(g.nodes):  # path drop's skipped samples: guidance runs the middle on the whole conditional half
        if n.target is routing.select_rows:
            n.replace_all_uses_with(n.args[0])
            g.erase_node(n)
    mids = stage_nodes(g, "middle")
    region = middle_region(g)
    wrap_sample_inputs(g, region, shapes2, shapes3, lambda a: g.call_function(routing.first_half, (a,)),
                       keep=lambda a: a.op == "call_module" and a.target == "sprint"
                       or a.op == "placeholder" and a.target == "ids_keep")
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
