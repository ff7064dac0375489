"""The adaLN modulations of many blocks as one matmul (target.batch_modulation).

Every block of a DiT computes Linear(SiLU(c)) on the same conditioning c: a (B, D) x (D, 6D) product per block whose
cost is reading its 16 MB weight (XL), three times per training step (forward, weight gradient, input gradient). Done
block by block that is 84 skinny matmuls per step at about half the card's bandwidth; `ModulationTable` computes them
as one product per run of weights that lie next to each other in memory, as MasterAdamW lays them out
(`table_linears`), and hands each block its (B, 6D) slice. The values are the blocks' own: the same weights and
inputs, rounded to the same dtype; only the matmuls' summation order differs. Weights not adjacent (float32 weights,
a plain optimizer) take a matmul each, as inside the blocks."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _Product(torch.autograd.Function):
    """SiLU(c) times k adjacent (O, I) weights with their biases: (B, k, O). Each weight's gradient is a view of one
    (k*O, I) product (the optimizer reads it where it lies)."""

    @staticmethod
    def forward(ctx, h, k, *params):
        w0, biases = params[0], params[k:]
        rows, cols = w0.shape
        weight = torch.as_strided(w0, (k * rows, cols), (cols, 1))  # the k weights as one, no copy
        x = h.to(w0.dtype)
        with torch.autocast(h.device.type, enabled=False):
            out = torch.addmm(torch.cat(biases), x, weight.t())
        ctx.save_for_backward(x, weight)
        ctx.k, ctx.in_dtype = k, h.dtype
        return out.view(h.shape[0], k, rows)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        k, cols = ctx.k, weight.shape[1]
        rows = weight.shape[0] // k
        g = grad.reshape(x.shape[0], k * rows).to(weight.dtype)
        need = ctx.needs_input_grad
        gh = (g @ weight).to(ctx.in_dtype) if need[0] else None
        gw = (g.t() @ x).view(k, rows, cols).unbind(0) if any(need[2 : 2 + k]) else (None,) * k
        gb = g.sum(0).view(k, rows).unbind(0) if any(need[2 + k :]) else (None,) * k
        return (gh, None, *gw, *gb)


def modulation_linear(block: nn.Module) -> nn.Linear | None:
    """The Linear of a block's `adaLN_modulation = Sequential(SiLU(), Linear)`, where the block takes `mod=`."""
    from sprintc.model import Block

    seq = getattr(block, "adaLN_modulation", None)
    if (isinstance(block, Block) and isinstance(seq, nn.Sequential) and len(seq) == 2
            and isinstance(seq[0], nn.SiLU) and isinstance(seq[1], nn.Linear)):
        return seq[1]
    return None


class ModulationTable(nn.Module):
    """Linear(SiLU(c)) for each of `linears` (the modulations of blocks that read the same c): a tuple of (B, O)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.linears = nn.ModuleList(linears)

    def runs(self, dtype: torch.dtype) -> list[list[int]]:
        """The linears in runs whose weights (all `dtype`, of one shape, with `dtype` biases) follow each other in one
        storage."""
        ws = [m.weight for m in self.linears]
        fits = [w.dtype == dtype and w.is_contiguous() and m.bias is not None and m.bias.dtype == dtype
                and m.bias.is_contiguous() for w, m in zip(ws, self.linears)]
        runs = []
        for i in sorted(range(len(ws)), key=lambda i: ws[i].data_ptr()):
            j = runs[-1][-1] if runs else None
            if (j is not None and fits[i] and fits[j] and ws[i].shape == ws[j].shape
                    and ws[i].untyped_storage().data_ptr() == ws[j].untyped_storage().data_ptr()
                    and ws[i].data_ptr() == ws[j].data_ptr() + ws[j].numel() * ws[j].element_size()):
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs

    def forward(self, c):
        h = F.silu(c)
        dev = c.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.linears[0].weight.dtype
        out = [None] * len(self.linears)
        for run in self.runs(dtype):
            if len(run) == 1:
                out[run[0]] = self.linears[run[0]](h)
                continue
            mods = [self.linears[i] for i in run]
            params = [m.weight for m in mods] + [m.bias for m in mods]
            for i, y in zip(run, _Product.apply(h, len(run), *params).unbind(1)):
                out[i] = y
        return tuple(out)


def table_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linears of the model's modulation tables, each table's in one run (smallest tables first, a Linear where
    it first appears): the order in which MasterAdamW lays out their weights, so that each table is one product."""
    tables = [v for m in model.modules() for v in vars(m).values() if isinstance(v, ModulationTable)]
    seen, out = set(), []
    for table in sorted(tables, key=lambda t: len(t.linears)):
        for lin in table.linears:
            if id(lin) not in seen:
                seen.add(id(lin))
                out.append(lin)
    return out
