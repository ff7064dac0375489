"""target.batch_modulation: the blocks' adaLN modulations as one matmul per run of adjacent weights
(sprintc/modulation.py) compute what the blocks compute, and train as they do."""
import copy

import pytest
import torch
import torch.nn as nn

from sprintc.modulation import ModulationTable
from sprintc.optim import MasterAdamW, low_precision_params
from sprintc.targets.inductor import regroup
from sprintc.targets_api import clip_and_step, lower
from test_targets import inputs, small


def adjacent_linears(k, rows=12, cols=4, gap=0):
    """k bf16 Linears whose weights follow each other in one buffer (`gap` elements between), biases apart."""
    g = torch.Generator().manual_seed(0)
    buf = torch.randn(k * (rows * cols + gap), generator=g).to(torch.bfloat16)
    out = []
    for i in range(k):
        lin = nn.Linear(cols, rows)
        lin.weight.data = buf[i * (rows * cols + gap):][: rows * cols].view(rows, cols)
        lin.bias.data = torch.randn(rows, generator=g).to(torch.bfloat16)
        out.append(lin)
    return out


def test_one_product_gives_each_linears_values_and_gradients():
    linears = adjacent_linears(3)
    table = ModulationTable(linears)
    assert table.runs(torch.bfloat16) == [[0, 1, 2]]
    c = torch.randn(5, 4, dtype=torch.bfloat16, requires_grad=True)
    weights = torch.randn(3, 5, 12)
    outs = table(c)
    sum((o.float() * w).sum() for o, w in zip(outs, weights)).backward()
    got = [(lin.weight.grad, lin.bias.grad) for lin in linears]
    gc = c.grad
    c.grad = None
    for lin in linears:
        lin.weight.grad = lin.bias.grad = None
    want = [lin(torch.nn.functional.silu(c)) for lin in linears]
    sum((o.float() * w).sum() for o, w in zip(want, weights)).backward()
    for o, w in zip(outs, want):
        torch.testing.assert_close(o, w)
    torch.testing.assert_close(gc, c.grad, rtol=2e-2, atol=2e-2)
    for (gw, gb), lin in zip(got, linears):
        torch.testing.assert_close(gw, lin.weight.grad, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(gb, lin.bias.grad, rtol=2e-2, atol=2e-2)
    # the weights' gradients are views of one product, where the optimizer reads them
    assert len({gw.untyped_storage().data_ptr() for gw, _ in got}) == 1


def test_weights_apart_or_of_another_dtype_take_a_matmul_each(modulation_products):
    assert ModulationTable(adjacent_linears(3, gap=8)).runs(torch.bfloat16) == [[0], [1], [2]]
    shuffled = adjacent_linears(4)
    table = ModulationTable([shuffled[2], shuffled[0], shuffled[1], shuffled[3]])
    assert table.runs(torch.bfloat16) == [[1, 2, 0, 3]]  # memory order, each output mapped back to its block
    assert ModulationTable(adjacent_linears(2)).runs(torch.float32) == [[0], [1]]
    float32 = [nn.Linear(4, 12), nn.Linear(4, 12)]
    c = torch.randn(3, 4)
    outs = ModulationTable(float32)(c)
    assert not modulation_products
    for o, lin in zip(outs, float32):
        torch.testing.assert_close(o, lin(torch.nn.functional.silu(c)))
    with torch.autocast("cpu", torch.bfloat16):
        table = ModulationTable([shuffled[2], shuffled[0], shuffled[1], shuffled[3]])
        for o, lin in zip(table(c), table.linears):
            assert o.dtype == torch.bfloat16
            torch.testing.assert_close(o, lin(torch.nn.functional.silu(c)))


def _train(model, opt, steps=3):
    """Losses of `steps` steps of `opt`, and the gradients of the first."""
    model.train()
    model.sprint.generator = torch.Generator().manual_seed(0)
    x, t, y = inputs(batch=4)
    losses, grads = [], None
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16):
            loss = model(x, t, y).float().square().mean()
        loss.backward()
        grads = grads or [p.grad.float().clone() for p in model.parameters()]
        clip_and_step(opt, model.parameters(), 1.0)
        losses.append(float(loss.detach()))
    return losses, grads


@pytest.mark.parametrize("skip_middle", [True, False])
def test_a_model_with_tables_trains_as_the_model_without(skip_middle, modulation_products):
    """MasterAdamW lays the tables' weights out next to each other, so each table is one product; three steps of
    training (path drop and its skip of the middle included) end where the blocks' own modulations end."""
    passes = [{"name": "partition", "encoder": 1, "decoder": 1}, {"name": "route", "drop": 0.5},
              {"name": "fuse", "kind": "concat_linear"}, {"name": "path_drop", "p": 0.5, "skip_middle": skip_middle},
              {"name": "pdg"}]
    base = lower(small(model__depth=6, passes=passes).model, {"name": "eager", "dtype": "bfloat16"}, device="cpu")
    tabled = copy.deepcopy(base)
    regroup(tabled, 1, glue=False, modulation=True)
    tables = [v for v in vars(tabled).values() if isinstance(v, ModulationTable)]
    # the training graph's encoder + decoder and middle, the guidance graph's middle (the same blocks: one table)
    assert sorted(len(t.linears) for t in tables) == ([2, 4] if skip_middle else [2, 4, 6])
    order = low_precision_params(tabled)
    assert order[:6] == [tabled.blocks[i].adaLN_modulation[1].weight for i in (0, 5, 1, 2, 3, 4)]
    opts = [MasterAdamW(m, lr=1e-3) for m in (tabled, base)]  # the same bf16 weights, laid out differently
    tabled.eval(), base.eval()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):  # the guidance graph's tables
        g_in = [torch.cat([v, v]) for v in inputs(batch=2)]
        g_in[2] = torch.cat([g_in[2][:2], torch.full_like(g_in[2][:2], 10)])
        got, want = tabled.forward_guidance(*g_in).float(), base.forward_guidance(*g_in).float()
    assert (got - want).norm() <= 1e-2 * want.norm()
    before = len(modulation_products)
    losses, grads = _train(tabled, opts[0])
    assert len(modulation_products) > before and all(k > 1 for k in modulation_products)
    assert all(len(t.runs(torch.bfloat16)) == 1 for t in tables)
    want_losses, want = _train(base, opts[1])
    torch.testing.assert_close(losses, want_losses, rtol=1e-2, atol=1e-4)
    for (name, _), a, b in zip(base.named_parameters(), grads, want):  # bf16 matmuls summed in another order
        assert (a - b).norm() <= 2e-2 * b.norm() + 1e-6, name
    assert losses[-1] < losses[0]


def test_sprintc_train_batches_the_modulations_only_with_master_weights_and_never_under_fsdp():
    from sprintc.compiler import compile_spec
    from sprintc.train import _lower

    spec = small(target__name="inductor").spec

    def tables(**kw):
        model = _lower(compile_spec(spec).model, spec, torch.device("cpu"), **kw)
        return [k for k, v in vars(model).items() if isinstance(v, ModulationTable)]

    assert tables(master=True)
    assert not tables(master=False)
    assert not tables(master=True, fsdp=True)
