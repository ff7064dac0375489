"""fuse: merge the dense encoder output with the restored middle output before the decoder.
concat_linear (the reference: Linear(2D, D) on [middle, encoder]), add, or none.

Where the middle output is the mask token at dropped positions (route's scatter, path drop), concat_linear is
split: Linear(2D, D)([m, e]) = W_m m + W_e e + b, and W_m applied per token commutes with choosing per position
between the kept tokens and the mask token. So W_m runs before the scatter, on the kept tokens and once on the mask
token (the fill), and the fusion adds W_e e + b: the same function and weights, with the middle's share of the
fusion at the middle's token count (a quarter at 75% drop) and no (B, N, 2D) concatenation."""
import operator

import torch
import torch.nn as nn

from sprintc import routing
from sprintc.pipeline import PassResult, insert_after, register, role_node


class Fusion(nn.Module):
    def __init__(self, kind: str, width: int, init: str = "xavier", split: bool = False):
        super().__init__()
        self.kind, self.width = kind, width
        self.split = split  # concat_linear whose middle input already holds W_m m (see the module's docstring)
        if kind == "concat_linear":
            self.linear = nn.Linear(2 * width, width)
            if init == "identity":  # output = middle: the rewritten model equals the original at drop 0
                with torch.no_grad():
                    self.linear.weight.zero_()
                    self.linear.weight[:, :width].copy_(torch.eye(width))
                    self.linear.bias.zero_()
            else:
                nn.init.xavier_uniform_(self.linear.weight)
                nn.init.zeros_(self.linear.bias)

    def forward(self, middle, encoder):
        if self.kind == "add":
            return middle + encoder
        if self.split:
            w = self.linear.weight
            return middle + nn.functional.linear(encoder.to(middle.dtype), w[:, self.width :], self.linear.bias)
        return self.linear(torch.cat([middle, encoder.to(middle.dtype)], -1))


@register("fuse", requires=("partition",), after=("route", "path_drop"))
def fuse(gm, cfg, ctx):
    if cfg.kind == "none":
        return PassResult(gm, False)
    if cfg.kind == "add" and cfg.init == "identity":
        raise ValueError("init: identity applies to concat_linear; `add` has no weights")
    graph = gm.graph
    m, e = role_node(graph, "middle_out"), role_node(graph, "encoder_out")
    chain = _mask_choices(m) if cfg.kind == "concat_linear" else []
    ctx.sprint.fuse = Fusion(cfg.kind, ctx.width, cfg.init, split=bool(chain))
    gm.add_submodule("sprint", ctx.sprint)
    if chain:
        _middle_share_first(graph, chain, ctx.width)
    f = insert_after(m, "sprint.fuse", (m, e), kind="call_module")
    f.meta["role"] = m.meta.pop("role")
    return PassResult(gm, True)


def _mask_choices(m):
    """The nodes from the middle output back to the last middle block that choose per position between the middle's
    tokens and one fill (scatter_tokens, drop_path: (x, _, fill, ...)), last first; [] unless they share the fill."""
    chain = []
    while m.op == "call_function" and m.target in (routing.scatter_tokens, routing.drop_path):
        chain.append(m)
        m = m.args[0]
    return chain if len({n.args[2] for n in chain}) == 1 else []


def _middle_share_first(graph, chain, width):
    """W_m onto the middle's tokens before the first choice and onto the fill, which every choice then reads."""
    first, fill = chain[-1], chain[-1].args[2]
    with graph.inserting_before(first):
        w = graph.get_attr("sprint.fuse.linear.weight")
        both = graph.call_function(routing.linear_share, (first.args[0], fill, w, 0, width))
        tokens, projected_fill = (graph.call_function(operator.getitem, (both, i)) for i in (0, 1))
    first.update_arg(0, tokens)
    for n in chain:
        n.update_arg(2, projected_fill)
