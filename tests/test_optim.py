"""MasterAdamW (train.master_weights): bf16 weights written from float32 masters, against torch's AdamW."""
import copy
import io
import textwrap

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from sprintc.optim import MasterAdamW, float32_params, float32_state_dict, join_master, split_master
from sprintc.targets_api import clip_and_step


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(3, 8)
        self.a, self.b = nn.Linear(8, 32), nn.Linear(32, 4)
        self.scale = nn.Parameter(torch.ones(32))

    def forward(self, x, y):
        return self.b(torch.nn.functional.gelu(self.a(x + self.emb(y))) * self.scale)


def _steps(pairs, n, max_norm, seed=1):
    """n steps of each (model, optimizer) on the same batches under CPU bf16 autocast; the clip norms per step."""
    g = torch.Generator().manual_seed(seed)
    norms = []
    for _ in range(n):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        row = []
        for m, o in pairs:
            o.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16):
                loss = m(x, y).float().pow(2).mean()
            loss.backward()
            row.append(float(clip_and_step(o, list(m.parameters()), max_norm)))
        norms.append(row)
    return norms


def _pair(wd=0.1):
    torch.manual_seed(0)
    ref = Net()
    net = copy.deepcopy(ref)
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    return ref, torch.optim.AdamW(ref.parameters(), foreach=True, **kw), net, MasterAdamW(net, **kw)


def test_master_adamw_trains_as_torch_adamw_under_autocast():
    ref, ro, net, mo = _pair()
    low = {"a.weight", "a.bias", "b.weight", "b.bias"}
    assert {n: p.dtype for n, p in net.named_parameters()} == {
        n: torch.bfloat16 if n in low else torch.float32 for n, _ in ref.named_parameters()}
    norms = _steps([(ref, ro), (net, mo)], 6, max_norm=0.5)
    assert any(a > 0.5 for a, _ in norms)  # the clip acted
    for a, b in norms:
        assert abs(a - b) <= 1e-6 * a
    masters = float32_params(net, mo)
    for (name, p), m, q in zip(ref.named_parameters(), masters, net.parameters()):
        assert m.dtype == torch.float32
        torch.testing.assert_close(m, p, rtol=0, atol=1e-6, msg=name)
        assert torch.equal(q, m.to(q.dtype)), name  # the bf16 weights are the masters rounded


def test_without_clipping_step_is_adamw_step():
    ref, ro, net, mo = _pair(wd=0.0)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        for m, o in ((ref, ro), (net, mo)):
            o.zero_grad()
            with torch.autocast("cpu", torch.bfloat16):
                m(x, y).float().pow(2).mean().backward()
            o.step()
    for p, m in zip(ref.parameters(), float32_params(net, mo)):
        torch.testing.assert_close(m, p, rtol=0, atol=1e-6)


def _saved(state):
    """state through torch.save and torch.load, as a checkpoint holds it."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf)


def test_state_dict_moves_between_master_adamw_and_torch_adamw():
    ref, ro, net, mo = _pair()
    _steps([(ref, ro), (net, mo)], 3, max_norm=1.0)
    sd = _saved(mo.state_dict())
    for i, p in enumerate(net.parameters()):
        assert sd["state"][i]["exp_avg"].dtype == torch.float32 and sd["state"][i]["exp_avg"].shape == p.shape
        assert float(sd["state"][i]["step"]) == 3
    # the master run's state and masters into a plain AdamW and the plain run's into a fresh MasterAdamW:
    # both continue as the original pair does
    plain = copy.deepcopy(ref)
    plain.load_state_dict(_saved(float32_state_dict(net, mo, net.state_dict())))
    po = torch.optim.AdamW(plain.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    po.load_state_dict(sd)
    again = copy.deepcopy(ref)
    ao = MasterAdamW(again, lr=1.0, betas=(0.9, 0.95), weight_decay=0.1)
    ao.load_state_dict(_saved(ro.state_dict()))
    assert ao.param_groups[0]["lr"] == 1e-2 and float(ao.step_count) == 3
    _steps([(ref, ro), (net, mo), (plain, po), (again, ao)], 2, max_norm=1.0, seed=7)
    for p, m, q, a in zip(ref.parameters(), float32_params(net, mo), plain.parameters(), float32_params(again, ao)):
        torch.testing.assert_close(q, m, rtol=0, atol=1e-6)
        torch.testing.assert_close(a, p, rtol=0, atol=1e-6)


def test_a_state_of_another_model_is_refused():
    _, _, net, mo = _pair()
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="parameters"):
        mo.load_state_dict(torch.optim.AdamW(other.parameters()).state_dict())


def test_a_frozen_weight_stays_and_the_others_step():
    _, _, net, mo = _pair()
    net.a.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    names = [n for n, _ in net.named_parameters()]
    master_before = float32_params(net, mo)[names.index("a.weight")].clone()
    _steps([(net, mo)], 2, max_norm=1.0)
    after = dict(net.named_parameters())
    assert torch.equal(after["a.weight"], before["a.weight"])
    assert torch.equal(float32_params(net, mo)[names.index("a.weight")], master_before)
    for n in ("a.bias", "b.weight", "b.bias", "scale", "emb.weight"):  # bf16 and float32 ones
        assert not torch.equal(after[n], before[n]), n


def test_restore_gives_back_float32_parameters_equal_to_the_masters():
    ref, ro, net, mo = _pair()
    _steps([(net, mo)], 2, max_norm=1.0)
    masters = [m.clone() for m in float32_params(net, mo)]
    mo.restore()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    for p, m in zip(net.parameters(), masters):
        assert torch.equal(p, m)
    MasterAdamW(net)  # the model takes a new one


def test_a_model_without_linear_layers_is_refused_and_training_takes_adamw_for_it():
    from sprintc.optim import adamw_for
    from sprintc.spec import TrainSpec

    with pytest.raises(ValueError, match="no float32 Linear"):
        MasterAdamW(nn.LayerNorm(4))
    norm = nn.LayerNorm(4)
    assert type(adamw_for(norm, TrainSpec(), 1e-4, torch.device("cpu"), master=True)) is torch.optim.AdamW
    assert type(adamw_for(Net(), TrainSpec(), 1e-4, torch.device("cpu"), master=True)) is MasterAdamW


KERNEL_CHECK = textwrap.dedent("""
    import torch
    from sprintc.kernels import GradientTable, adamw_master_, grad_norm
    from sprintc.optim import _update, join_master, split_master

    g = torch.Generator().manual_seed(0)
    # gradients of sizes around the block (2,048), read in place; in the flat buffers each starts at a block and the
    # padding after it is zero (and must stay zero)
    sizes, offsets, n = (1000, 2049, 4096, 7), (0, 2048, 6144, 10240), 12288
    grads = [torch.randn(k, generator=g).to(torch.bfloat16) for k in sizes]
    grads[1] = torch.cat([grads[1][:1], grads[1]])[1:]  # a view 2 bytes past an allocation: point() copies it aligned
    assert grads[1].data_ptr() % 16
    for part in ((0, 1, 2, 3), (0, 2)):  # every tensor (program i, block i), or some (a frozen one's blocks skipped)
        at = torch.cat([torch.arange(offsets[i], offsets[i] + sizes[i]) for i in part])
        flat_grads = torch.zeros(n, dtype=torch.bfloat16)
        flat_grads[at] = torch.cat([grads[i] for i in part])
        table = GradientTable([sizes[i] for i in part], [offsets[i] for i in part], "cpu")
        held = table.point([grads[i] for i in part])  # with the aligned copy, alive until the kernels ran
        assert table.dense == (len(part) == 4)
        torch.testing.assert_close(grad_norm(table), flat_grads.float().norm(), rtol=1e-6, atol=0)
        for scale, wd, ema_w in ((None, 0.0, 0.7), (None, 0.05, 0.3), (torch.tensor(2.5), 0.05, None)):
            # EMA weights either side of torch.lerp's switch at 0.5, and none
            master, m, v, ema = (torch.zeros(n) for _ in range(4))
            master[at], m[at], ema[at] = (torch.randn(len(at), generator=g) * s for s in (1.0, 0.1, 1.0))
            v[at] = torch.rand(len(at), generator=g) * 0.01
            master = join_master(*split_master(master))  # a master the split holds exactly
            ref = [master.clone(), torch.zeros(n, dtype=torch.bfloat16), flat_grads, m.clone(), v.clone()]
            got = [*split_master(master), table, m.clone(), v.clone()]
            lr, step = torch.tensor(3e-3), torch.tensor(7.0)
            _update(*ref, lr, step, scale, 0.9, 0.999, 1e-8, wd)
            got_ema = ema.clone() if ema_w is not None else None
            adamw_master_(*got, lr, step, scale, 0.9, 0.999, 1e-8, wd, got_ema,
                          None if ema_w is None else torch.tensor(ema_w))
            new_master = join_master(got[0], got[1])
            assert torch.equal(got[0], new_master.bfloat16())  # the weights: the new masters rounded to nearest
            assert torch.equal(split_master(new_master)[1], got[1])  # split as optim.split_master splits
            rest = torch.ones(n, dtype=torch.bool)
            rest[at] = False
            if ema_w is not None:
                torch.testing.assert_close(got_ema[at], ema.lerp(new_master, ema_w)[at], rtol=1e-6, atol=1e-7)
                assert torch.equal(got_ema[rest], ema[rest])
            for a, b, before in ((new_master, ref[0], master), (got[3], ref[3], m), (got[4], ref[4], v)):
                torch.testing.assert_close(a[at], b[at], rtol=1e-6, atol=1e-6)
                assert torch.equal(a[rest], before[rest])  # padding and skipped tensors as they were
    # float32 parameters where they lie, each with its own step count (adamw_float32_), against _update
    from sprintc.kernels import Float32Params, adamw_float32_
    sizes = (1000, 2049, 7)
    values = [torch.randn(k, generator=g) for k in sizes]
    moments = [(torch.randn(k, generator=g) * 0.1, torch.rand(k, generator=g) * 0.01) for k in sizes]
    steps = [torch.tensor(s) for s in (3.0, 7.0, 1.0)]
    fgrads = [torch.randn(k, generator=g) for k in sizes]
    for scale in (None, torch.tensor(2.5)):
        ref = [[t.clone() for t in (x, *mv)] for x, mv in zip(values, moments)]
        got = [[t.clone() for t in (x, *mv)] for x, mv in zip(values, moments)]
        table = Float32Params([r[0] for r in got], [r[1] for r in got], [r[2] for r in got], steps, "cpu")
        table.grads.point(fgrads)
        torch.testing.assert_close(grad_norm(table.grads), torch.cat(fgrads).norm(), rtol=1e-6, atol=0)
        lr = torch.tensor(3e-3)
        for r, x, st in zip(ref, fgrads, steps):
            _update(r[0], r[0], x, r[1], r[2], lr, st, scale, 0.9, 0.999, 1e-8, 0.05)
        adamw_float32_(table, lr, scale, 0.9, 0.999, 1e-8, 0.05)
        for a, b in zip(got, ref):
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    print("adamw ok")
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU tests/test_cuda.py runs the compiled kernel")
def test_the_adamw_kernel_computes_the_torch_update():
    from test_kernels import interpreted

    interpreted(KERNEL_CHECK, "adamw ok")


def test_torch_distributed_checkpoint_saves_and_restores_it_by_parameter_name():
    """What `sprintc train` saves (get_optimizer_state_dict) and how it resumes (set_optimizer_state_dict)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    ref, ro, net, mo = _pair()
    _steps([(ref, ro), (net, mo)], 3, max_norm=1.0)
    sd = _saved(get_optimizer_state_dict(net, mo))
    assert sd["state"]["a.weight"]["exp_avg"].dtype == torch.float32 and float(sd["state"]["a.weight"]["step"]) == 3
    again = copy.deepcopy(ref)
    again.load_state_dict(_saved(float32_state_dict(net, mo, net.state_dict())))
    ao = MasterAdamW(again, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    set_optimizer_state_dict(again, ao, sd)
    _steps([(net, mo), (again, ao)], 2, max_norm=1.0, seed=5)
    for m, a in zip(float32_params(net, mo), float32_params(again, ao)):
        assert torch.equal(m, a)  # a resumed run continues bit for bit


def test_an_attached_ema_follows_the_masters_as_the_separate_update_does():
    from sprintc.train import update_ema

    ref, ro, net, mo = _pair()
    ema_ref, ema = copy.deepcopy(ref), copy.deepcopy(ref)  # float32 copies, as sprintc train makes before the optimizer
    mo.attach_ema(ema, net)
    g = torch.Generator().manual_seed(11)
    for step in range(4):
        decay = 0.5 + 0.1 * step
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        for m, o in ((ref, ro), (net, mo)):
            o.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16):
                m(x, y).float().pow(2).mean().backward()
        mo.ema_weight.fill_(1 - decay)
        clip_and_step(ro, list(ref.parameters()), 1.0)
        clip_and_step(mo, list(net.parameters()), 1.0)
        update_ema(ema_ref, ref, decay)
    for (name, a), b in zip(ema_ref.named_parameters(), ema.parameters()):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


def test_a_transformed_model_of_ones_own_trains_with_it_as_with_adamw():
    """The user's loop of docs/TRANSFORM.md: sprintc.transform, then MasterAdamW with the EMA attached."""
    import sprintc
    from test_transform import ROUTED, DiT, inputs
    from sprintc.train import update_ema

    torch.manual_seed(0)
    ref = DiT()
    sprintc.transform(ref, ROUTED)
    ref.train()
    net, ema_ref, ema = copy.deepcopy(ref), copy.deepcopy(ref), copy.deepcopy(ref)
    ro = torch.optim.AdamW(ref.parameters(), lr=1e-3, foreach=True)
    mo = MasterAdamW(net, lr=1e-3)
    mo.attach_ema(ema, net)
    assert net.sprint.fuse.linear.weight.dtype == torch.bfloat16 and net.sprint.mask_token.dtype == torch.float32
    for step in range(3):
        x, t, y = inputs(4, seed=step)
        for m, o in ((ref, ro), (net, mo)):
            torch.manual_seed(100 + step)  # the same kept tokens in both
            o.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16):
                loss = (m(x, t, y).float() - x).square().mean()
            loss.backward()
        mo.ema_weight.fill_(0.5)
        clip_and_step(ro, list(ref.parameters()), 1.0)
        clip_and_step(mo, list(net.parameters()), 1.0)
        update_ema(ema_ref, ref, 0.5)
    for (name, p), m, e_ref, e in zip(ref.named_parameters(), float32_params(net, mo), ema_ref.parameters(), ema.parameters()):
        torch.testing.assert_close(m, p, rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(e, e_ref, rtol=0, atol=1e-6, msg=name)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=64))
def test_a_master_split_into_bf16_and_a_low_part_comes_back(values):
    x = torch.tensor(values, dtype=torch.float32)
    weights, low = split_master(x)
    assert weights.dtype == torch.bfloat16 and low.dtype == torch.int16
    assert torch.equal(weights, x.to(torch.bfloat16))  # the weights are autocast's rounding
    back = join_master(weights, low)
    # exact, save a tie rounded down, which comes back 1 ulp lower (and still rounds to the same weight)
    ulps = x.view(torch.int32).long() - back.view(torch.int32).long()
    tie_down = (x.view(torch.int32) & 0xFFFF == 0x8000) & (weights.view(torch.int16) & 1 == 0)
    assert torch.equal(ulps, tie_down.long())
    assert all(torch.equal(a, b) for a, b in zip(split_master(back), (weights, low)))  # stable once split


def test_ties_split_to_even_weights_and_every_other_value_exactly():
    # 1 + half a bf16 ulp (a tie, down to 1), 1.0078125 + half (a tie, up), just above and below a half, zero
    bits = torch.tensor([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F807FFF, 0], dtype=torch.int32)
    x = bits.view(torch.float32)
    x = torch.cat([x, -x])  # the sign bit aside, negative values split alike
    weights, low = split_master(x)
    assert weights.tolist() == [1.0, 1.015625, 1.0078125, 1.0, 0.0, -1.0, -1.015625, -1.0078125, -1.0, 0.0]
    ulps = (x.view(torch.int32) - join_master(weights, low).view(torch.int32)).tolist()
    assert ulps == [1, 0, 0, 0, 0] * 2  # only a tie rounded down comes back lower in magnitude


def test_the_adamw_kernel_refuses_masters_not_held_as_bf16_weights_and_int16_low_parts():
    from sprintc.kernels import GradientTable, adamw_master_

    n, one = 2048, torch.ones(())
    table = GradientTable([n], [0], "cpu")
    moments = torch.zeros(n), torch.zeros(n)
    for weights, low in ((torch.zeros(n), torch.zeros(n, dtype=torch.int16)),  # a float32 master, as before
                         (torch.zeros(n, dtype=torch.bfloat16), torch.zeros(n, dtype=torch.bfloat16))):
        with pytest.raises(TypeError, match=f"bf16 weights and int16 low parts, not {weights.dtype} and {low.dtype}"):
            adamw_master_(weights, low, table, *moments, one, one, None, 0.9, 0.999, 1e-8, 0.0)
