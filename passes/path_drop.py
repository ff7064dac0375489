"""path_drop (training): per sample with probability p the whole middle output becomes the mask token,
so the model also learns the shallow path alone. The per-sample decision is a graph input. With skip_middle,
the samples the middle runs on are a graph input too (`middle_rows`): every per-sample input of the middle
region is cut to those rows, and the others' middle output is the mask token without being computed."""
from sprintc import routing
from sprintc.pipeline import (PassResult, add_placeholder, insert_after, mask_node, middle_region, register, role_node,
                              stage_nodes, wrap_sample_inputs)


@register("path_drop", requires=("partition",), after=("route",))
def path_drop(gm, cfg, ctx):
    graph = gm.graph
    ctx.path_drop_p, ctx.path_drop_skip = cfg.p, cfg.skip_middle
    shapes2, shapes3 = (ctx.shapes(gm, 2), ctx.shapes(gm, 3)) if cfg.skip_middle else ({}, {})
    flag = add_placeholder(graph, "path_drop")
    m = role_node(graph, "middle_out")
    mask = mask_node(graph, stage_nodes(graph, "middle")[0], gm, ctx)
    rows = None
    if cfg.skip_middle:
        rows = add_placeholder(graph, "middle_rows")
        # the token stream's rows are taken after its gather, from the (B, M, D) kept tokens: a smaller copy than the
        # (B, N, D) stream's. Side inputs' gathers take the rows' ids instead: an input shared by the batch (RoPE
        # angles) stays shared when ids_keep is None. The scatters put the kept tokens back by the same rows' ids.
        region = (set(stage_nodes(graph, "middle")) | {n for n in middle_region(graph) if not n.meta.get("stream")}
                  | {n for n in graph.nodes if n.target is routing.scatter_tokens})
        wrap_sample_inputs(graph, region, shapes2, shapes3, lambda a: graph.call_function(routing.select_rows, (a, rows)))
    d = insert_after(m, routing.drop_path, (m, flag, mask, rows))
    d.meta["role"] = m.meta.pop("role")
    return PassResult(gm, True)
