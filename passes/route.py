"""route: the middle blocks see M of N tokens. A gather before them (the token stream and every per-token
side input, e.g. RoPE angles, with the same indices) and a scatter after them that puts each kept token
back and fills dropped positions with the mask token. `ids_keep` becomes an input of the graph."""
from sprintc import routing
from sprintc.pipeline import PassResult, add_placeholder, insert_after, mask_node, register, stage_nodes


@register("route", requires=("partition",))
def route(gm, cfg, ctx):
    ctx.plan = routing.plan_route(cfg, ctx.grid, tuple(cfg.protected) or ctx.protected)
    graph = gm.graph
    shapes2, shapes3 = ctx.shapes(gm, 2), ctx.shapes(gm, 3)
    mids = stage_nodes(graph, "middle")
    ids = add_placeholder(graph, "ids_keep")
    stream = mids[0].args[0]
    with graph.inserting_before(mids[0]):
        g = graph.call_function(routing.gather_tokens, (stream, ids))
    g.meta["stream"] = True
    mids[0].update_arg(0, g)
    # per-token side inputs: a dim of size N that does not follow the batch size
    gathered = {}
    for blk in mids:  # positional and keyword inputs (diffusers passes e.g. image_rotary_emb=)
        for key, a in [*enumerate(blk.args[1:], 1), *blk.kwargs.items()]:
            dim = _token_dim(a, ctx.tokens, shapes2, shapes3)
            if dim is None:
                continue
            if a not in gathered:  # before its first user: the input may be made between middle blocks
                with graph.inserting_before(blk):
                    gathered[a] = graph.call_function(routing.gather_tokens, (a, ids, dim))
            if isinstance(key, int):
                blk.update_arg(key, gathered[a])
            else:
                blk.update_kwarg(key, gathered[a])
    last = mids[-1]
    mask = mask_node(graph, mids[0], gm, ctx)
    s = insert_after(last, routing.scatter_tokens, (last, ids, mask, ctx.tokens))
    s.meta["role"] = last.meta.pop("role")
    return PassResult(gm, True)


def _token_dim(a, n, shapes2, shapes3):
    """Where a block input carries one entry per token, as the token stream does: (B, N, ...) or a
    batch-shared (N, ...) / (1, N, ...). Conditioning such as (B, D) is never per-token, even if D == N."""
    if not hasattr(a, "name") or a.name not in shapes2:
        return None
    s2, s3 = shapes2[a.name], shapes3[a.name]
    if not isinstance(s2, tuple) or not all(isinstance(d, int) for d in s2):
        return None
    if s2 and s2[0] != s3[0]:  # follows the batch size
        return 1 if len(s2) >= 3 and s2[1] == n else None
    if len(s2) >= 2 and s2[0] == n:
        return 0
    if len(s2) >= 3 and s2[0] == 1 and s2[1] == n:
        return 1
    return None
