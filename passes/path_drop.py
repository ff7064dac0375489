"""path_drop (training): per sample with probability p the whole middle output becomes the mask token,
so the model also learns the shallow path alone. The per-sample decision is a graph input."""
from sprintc import routing
from sprintc.pipeline import PassResult, add_placeholder, insert_after, mask_node, register, role_node, stage_nodes


@register("path_drop", requires=("partition",), after=("route",))
def path_drop(gm, cfg, ctx):
    graph = gm.graph
    ctx.path_drop_p = cfg.p
    flag = add_placeholder(graph, "path_drop")
    m = role_node(graph, "middle_out")
    mask = mask_node(graph, stage_nodes(graph, "middle")[0], gm, ctx)
    d = insert_after(m, routing.drop_path, (m, flag, mask))
    d.meta["role"] = m.meta.pop("role")
    return PassResult(gm, True)
