"""fuse: merge the dense encoder output with the restored middle output before the decoder.
concat_linear (the reference: Linear(2D, D) on [middle, encoder]), add, or none."""
import torch
import torch.nn as nn

from sprintc.pipeline import PassResult, insert_after, register, role_node


class Fusion(nn.Module):
    def __init__(self, kind: str, width: int, init: str = "xavier"):
        super().__init__()
        self.kind = kind
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
        return self.linear(torch.cat([middle, encoder.to(middle.dtype)], -1))


@register("fuse", requires=("partition",), after=("route", "path_drop"))
def fuse(gm, cfg, ctx):
    if cfg.kind == "none":
        return PassResult(gm, False)
    if cfg.kind == "add" and cfg.init == "identity":
        raise ValueError("init: identity applies to concat_linear; `add` has no weights")
    ctx.sprint.fuse = Fusion(cfg.kind, ctx.width, cfg.init)
    graph = gm.graph
    m, e = role_node(graph, "middle_out"), role_node(graph, "encoder_out")
    gm.add_submodule("sprint", ctx.sprint)
    f = insert_after(m, "sprint.fuse", (m, e), kind="call_module")
    f.meta["role"] = m.meta.pop("role")
    return PassResult(gm, True)
