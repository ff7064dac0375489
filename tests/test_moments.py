"""train.moments_dtype: bfloat16: MasterAdamW's moments stored in bf16, rounded stochastically."""
import textwrap

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from sprintc.optim import MasterAdamW, float32_params, moment_noise, round_bf16_stochastic
from sprintc.targets_api import clip_and_step


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 64), nn.Linear(64, 4)

    def forward(self, x):
        return self.b(torch.nn.functional.gelu(self.a(x)))


def _train(opt_kw, steps, seed=0):
    """`steps` MasterAdamW steps of Net on a fixed regression task under CPU bf16 autocast: the losses."""
    torch.manual_seed(seed)
    net = Net()
    opt = MasterAdamW(net, lr=3e-3, betas=(0.9, 0.999), weight_decay=0.0, **opt_kw)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 4, generator=g)
    losses = []
    for _ in range(steps):
        x = torch.randn(64, 8, generator=g)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16):
            loss = (net(x).float() - x @ w).pow(2).mean()
        loss.backward()
        clip_and_step(opt, list(net.parameters()), 1.0)
        losses.append(loss.item())
    return net, opt, losses


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-2.0 ** 100, max_value=2.0 ** 100))
def test_stochastic_rounding_is_one_of_the_two_neighbours_and_right_on_average(x):
    value = torch.tensor([x], dtype=torch.float32).expand(65536)
    rounded = round_bf16_stochastic(value, torch.arange(65536)).double()
    down = torch.tensor([x], dtype=torch.float32).view(torch.int32) >> 16 << 16  # truncated toward zero
    neighbours = {down.view(torch.float32).item(), (down + (1 << 16)).view(torch.float32).item()}
    assert set(rounded.unique().tolist()) <= neighbours
    # over every value of the 16 random bits, the mean is the float32 value itself
    assert rounded.mean().item() == pytest.approx(float(value[0]), rel=1e-12, abs=0)


def test_the_random_bits_are_balanced_and_change_with_the_place_and_the_step():
    a, b = moment_noise(1000, 65536, 7), moment_noise(1000, 65536, 8)
    assert int(a.min()) >= 0 and int(a.max()) < 2 ** 32
    for bit in range(32):  # each bit set in half the elements (6 sigma: 1.2%)
        assert abs(float(((a >> bit) & 1).double().mean()) - 0.5) < 0.012, bit
    assert abs(float(((a ^ b) & 0xFFFF).ne(0).double().mean()) - 1) < 1e-3  # another step, other bits
    assert torch.equal(moment_noise(1500, 100, 7), a[500:600])  # a function of place and step only


def test_bf16_moments_decay_as_float32_ones_on_average():
    """With zero gradients the second moment decays by beta2 = 0.999 a step. Rounded to nearest it would stay where it
    is (0.1% is under half a bf16 step); stochastic rounding keeps the decay right on average."""
    net = Net()
    opt = MasterAdamW(net, lr=1e-3, betas=(0.9, 0.999), moments_dtype=torch.bfloat16)
    assert opt.exp_avg.dtype == opt.exp_avg_sq.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(0)
    opt.exp_avg_sq.copy_(torch.rand(opt.exp_avg_sq.shape, generator=g) + 0.5)
    opt.exp_avg.copy_(torch.randn(opt.exp_avg.shape, generator=g))

    def sums():  # over the parameters' moments (the flat buffers' padding stays as it is)
        st = [opt.state[p] for p in net.parameters()]
        return (sum(s["exp_avg_sq"].double().sum() for s in st), sum(s["exp_avg"].double().abs().sum() for s in st))

    v0, m0 = sums()
    for _ in range(200):
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.clip_and_step(0.0)
    v, m = sums()
    assert float(v / v0) == pytest.approx(0.999 ** 200, rel=1e-2)  # rounded to nearest: 1.0
    assert float(m / m0) == pytest.approx(0.9 ** 200, rel=0.05)


def test_bf16_moments_train_as_float32_moments():
    _, _, exact = _train({}, 300)
    net, opt, rounded = _train({"moments_dtype": torch.bfloat16}, 300)
    assert exact[-1] < 0.2 * exact[0]  # it learns
    for a, b in zip(exact[::50], rounded[::50]):
        assert b == pytest.approx(a, rel=0.05)
    assert sum(rounded[-50:]) == pytest.approx(sum(exact[-50:]), rel=0.05)
    assert all(p.dtype == torch.float32 for p in float32_params(net, opt))
    assert opt.state[net.a.weight]["exp_avg"].dtype == torch.bfloat16


def test_a_bf16_moment_state_moves_to_float32_moments_and_back():
    net, opt, _ = _train({"moments_dtype": torch.bfloat16}, 5)
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == torch.bfloat16
    exact = MasterAdamW(Net(), lr=3e-3, betas=(0.9, 0.999), weight_decay=0.0)
    exact.load_state_dict(sd)  # widened exactly
    assert torch.equal(exact.exp_avg, opt.exp_avg.float()) and torch.equal(exact.exp_avg_sq, opt.exp_avg_sq.float())
    again = MasterAdamW(Net(), lr=3e-3, betas=(0.9, 0.999), weight_decay=0.0,
                        moments_dtype=torch.bfloat16)
    again.load_state_dict(exact.state_dict())
    assert torch.equal(again.exp_avg, opt.exp_avg) and float(again.step_count) == 5
    plain = torch.optim.AdamW(Net().parameters(), lr=3e-3)
    plain.load_state_dict(sd)  # torch's AdamW takes it too (in its parameters' dtype)


def test_other_moment_dtypes_are_refused():
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        MasterAdamW(Net(), moments_dtype=torch.float16)


KERNEL_CHECK = textwrap.dedent("""
    import torch
    from sprintc.kernels import GradientTable, adamw_master_
    from sprintc.optim import _update, join_master, split_master

    g = torch.Generator().manual_seed(0)
    sizes, offsets, n = (1000, 2049, 7), (0, 2048, 6144), 8192
    grads = [torch.randn(k, generator=g).to(torch.bfloat16) for k in sizes]
    at = torch.cat([torch.arange(o, o + k) for o, k in zip(offsets, sizes)])
    flat = torch.zeros(n, dtype=torch.bfloat16)
    flat[at] = torch.cat(grads)
    table = GradientTable(list(sizes), list(offsets), "cpu")
    table.point(grads)
    master = join_master(*split_master(torch.randn(n, generator=g)))
    m, v = (torch.randn(n, generator=g) * 0.1).bfloat16(), (torch.rand(n, generator=g) * 0.01).bfloat16()
    lr, step, scale = torch.tensor(3e-3), torch.tensor(7.0), torch.tensor(2.5)
    ref = [master.clone(), torch.zeros(n, dtype=torch.bfloat16), flat, m.clone(), v.clone()]
    _update(*ref, lr, step, scale, 0.9, 0.999, 1e-8, 0.05)  # the whole buffer from place 0
    exact = [master.clone(), torch.zeros(n, dtype=torch.bfloat16), flat, m.float(), v.float()]
    _update(*exact, lr, step, scale, 0.9, 0.999, 1e-8, 0.05)  # float32 moments
    got = [*split_master(master), table, m.clone(), v.clone()]
    adamw_master_(*got, lr, step, scale, 0.9, 0.999, 1e-8, 0.05)
    torch.testing.assert_close(join_master(got[0], got[1])[at], ref[0][at], rtol=1e-6, atol=1e-6)
    for k in (3, 4):
        a, b = got[k][at].float(), ref[k][at].float()
        ulp = b.abs() * 2 ** -7 + 1e-8  # one bf16 step at most (float32 results 1e-7 apart may round either way;
        # + for a moment that cancels to about 0)
        assert bool(((a - b).abs() <= ulp).all())
        assert float((a == b).double().mean()) > 0.999, float((a == b).double().mean())
        assert not torch.equal(got[k][at], exact[k][at].bfloat16())  # not rounded to nearest
    print("bf16 moments ok")
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU tests/test_cuda.py runs the compiled kernel")
def test_the_adamw_kernel_stores_bf16_moments_as_the_torch_update_does():
    from test_kernels import interpreted

    interpreted(KERNEL_CHECK, "bf16 moments ok")


def test_sprintc_train_keeps_bf16_moments_with_master_weights_and_says_when_it_cannot(tmp_path):
    from sprintc import checkpoint as ckpt
    from sprintc.train import train
    from test_train import quiet, spec

    s = spec(stages=((3, 8, True), (2, 4, False)), moments_dtype="bfloat16")
    s["target"] = {"name": "eager", "dtype": "bfloat16"}  # master weights: one process, bf16
    run = train(s, tmp_path / "bf16", **quiet())
    assert len(run["losses"]) == 5 and all(x == x for x in run["losses"])
    state = ckpt.load(tmp_path / "bf16").state["optimizer"]["state"]
    assert state["blocks.0.attn.qkv.weight"]["exp_avg_sq"].dtype == torch.bfloat16
    assert state["sprint.mask_token"]["exp_avg_sq"].dtype == torch.float32  # float32 parameters keep theirs
    # float32 training has no master weights: AdamW's moments stay float32, and the log says so
    s["target"] = {"name": "eager", "dtype": "float32"}
    train(s, tmp_path / "f32", **quiet())
    assert '"event": "moments_dtype", "asked": "bfloat16", "used": "float32"' in (tmp_path / "f32" / "metrics.jsonl").read_text()
    assert '"moments_dtype"' not in (tmp_path / "bf16" / "metrics.jsonl").read_text()
    state = ckpt.load(tmp_path / "f32").state["optimizer"]["state"]
    assert state["blocks.0.attn.qkv.weight"]["exp_avg_sq"].dtype == torch.float32


def test_a_spec_with_another_moment_dtype_is_refused(tmp_path):
    from sprintc.spec import SpecError, load_spec

    path = tmp_path / "bad.yaml"
    path.write_text("extends: digits_sprint\ntrain: {moments_dtype: float16}\n")
    with pytest.raises(SpecError, match="moments_dtype"):
        load_spec(path)


def test_a_run_with_bf16_moments_resumes_where_it_stopped(tmp_path):
    from sprintc.train import train
    from test_train import quiet, spec

    s = spec(stages=((4, 8, True), (3, 4, False)), moments_dtype="bfloat16")
    s["target"] = {"name": "eager", "dtype": "bfloat16"}
    full = train(s, tmp_path / "a", **quiet())
    train(s, tmp_path / "b", **quiet(max_steps=4))
    rest = train(s, tmp_path / "b", **quiet(resume=True))
    assert len(rest["losses"]) == 3
    assert all(abs(x - y) <= 1e-4 * max(1.0, abs(x)) for x, y in zip(full["losses"][4:], rest["losses"])), (full, rest)
