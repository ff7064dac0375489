"""Samplers and guidance, on analytic models whose exact answer is known and on a tiny SPRINT model."""
import pytest
import torch
import torch.nn as nn

import sprintc
from sprintc.diffusion import ddpm_alphas_cumprod, sample
from sprintc.errors import SprintcError
from conftest import tiny_spec


def gauss_spec(objective="flow", channels=1, size=1, num_classes=2, sampler="euler"):
    return sprintc.load_spec({
        "model": {"input": {"channels": channels, "size": size}, "patch": 1, "width": 8, "depth": 1, "heads": 1,
                  "num_classes": num_classes},
        "train": {"objective": objective}, "sample": {"sampler": sampler, "guidance": "none"},
        "target": {"name": "eager", "dtype": "float32"},
    })


class GaussVelocity(nn.Module):
    """Exact velocity of x_t = (1-t) x0 + t eps for x0 ~ N(mu_y, s^2) per pixel (mu by class; the null
    class gets its own mean), in float64 so only the sampler's error shows."""

    def __init__(self, mus, s):
        super().__init__()
        self.register_buffer("mus", torch.tensor(mus, dtype=torch.float64))
        self.s = s
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))  # gives the sampler a device/dtype

    def forward(self, x, t, y=None):
        mu = self.mus[y if y is not None else 0].view(-1, 1, 1, 1)
        t = t.view(-1, 1, 1, 1)
        var = (1 - t) ** 2 * self.s ** 2 + t ** 2
        return -mu + (t - (1 - t) * self.s ** 2) / var * (x - (1 - t) * mu)


class GaussEps(nn.Module):
    """Exact eps of x_k = sqrt(a_k) x0 + sqrt(1-a_k) eps, x0 ~ N(mu, s^2); fed the integer timestep."""

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s
        self.register_buffer("ac", ddpm_alphas_cumprod())
        self.w = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x, t, y=None):
        a = self.ac[t.round().long()].view(-1, 1, 1, 1)
        var = a * self.s ** 2 + 1 - a
        return (1 - a).sqrt() / var * (x - a.sqrt() * self.mu)


_BUILT = {}


def random_tiny(channels=1, **over):
    """A tiny SPRINT model with random weights (built once per configuration: building costs seconds)."""
    key = repr((channels, sorted(over.items())))
    if key not in _BUILT:
        _BUILT[key] = _random_tiny(channels, **over)
    return _BUILT[key]


def _random_tiny(channels, **over):
    spec = sprintc.load_spec(tiny_spec(model__input={"channels": channels, "size": 8}, **over))
    model = sprintc.build(spec)
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():  # adaLN-zero init makes the output 0: give it a real function
        p.data.normal_(0, 0.05, generator=g)
    return spec, model


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_heun_beats_euler_at_equal_steps():
    mu, s = 1.5, 0.5
    spec, model = gauss_spec(size=4), GaussVelocity([mu, mu, 0.0], s)
    noise = torch.randn(64, 1, 4, 4, generator=gen(), dtype=torch.float64)
    exact = mu + s * noise  # the probability-flow map of a Gaussian is affine
    err = {}
    for sampler in ("euler", "heun"):
        x = sample(model, spec, [0] * 64, sampler=sampler, steps=8, noise=noise)
        err[sampler] = (x.double() - exact).abs().max().item()
    assert err["heun"] < err["euler"] / 5, err
    assert err["heun"] < 0.02, err


def test_sde_recovers_gaussian_mean_and_variance():
    mu, s = 1.5, 0.5
    spec, model = gauss_spec(sampler="sde"), GaussVelocity([mu, mu, 0.0], s)
    x = sample(model, spec, [0] * 4000, sampler="sde", steps=100, generator=gen(1)).flatten().double()
    assert abs(x.mean().item() - mu) < 0.04, x.mean()
    assert abs(x.std().item() - s) < 0.04, x.std()
    # and it is stochastic: the ODE from the same start would give a different sample
    assert x.std() > 0.4


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_ddpm_ddim_recover_gaussian(sampler):
    mu, s = -0.7, 0.3
    spec, model = gauss_spec(objective="ddpm", sampler=sampler), GaussEps(mu, s)
    x = sample(model, spec, [0] * 3000, sampler=sampler, steps=100, generator=gen(2)).flatten().double()
    assert abs(x.mean().item() - mu) < 0.04, x.mean()
    assert abs(x.std().item() - s) < 0.04, x.std()


def test_cfg_moves_toward_the_conditional_mean():
    # class 0 mean 1, null class mean -1: guidance w extrapolates the velocity, the mean goes to
    # u + w (c - u) = -1 + 2 w for this affine-in-mu model at t -> 0
    spec, model = gauss_spec(size=2), GaussVelocity([1.0, 1.0, -1.0], 0.5)
    noise = torch.randn(256, 1, 2, 2, generator=gen(), dtype=torch.float64)
    plain = sample(model, spec, [0] * 256, guidance="none", steps=20, noise=noise, sampler="heun")
    guided = sample(model, spec, [0] * 256, guidance="cfg", scale=2.0, steps=20, noise=noise, sampler="heun")
    assert guided.mean() > plain.mean() + 0.5


def test_cfg_scale_one_equals_conditional():
    spec, model = random_tiny()
    labels = [0, 3, 7]
    calls = {}
    a = sample(model, spec, labels, guidance="none", sampler="sde", steps=6, generator=gen(3))
    b = sample(model, spec, labels, guidance="cfg", scale=1.0, sampler="sde", steps=6, generator=gen(3), stats=calls)
    assert torch.equal(a, b)
    assert calls == {"forward": 18, "guidance": 0}  # one conditional row per image and step


def test_pdg_outside_interval_equals_no_guidance():
    spec, model = random_tiny()
    labels = [1, 2]
    for sampler in ("euler", "sde"):
        a = sample(model, spec, labels, guidance="none", sampler=sampler, steps=5, generator=gen(4))
        calls = {}
        b = sample(model, spec, labels, guidance="pdg", scale=3.0, interval=(0.0, 0.01), sampler=sampler, steps=5,
                   generator=gen(4), stats=calls)
        assert torch.equal(a, b)
        assert calls["guidance"] == 0


def test_pdg_interval_mixes_graphs_and_applies_guidance_sum():
    spec, model = random_tiny()
    labels = torch.tensor([1, 2])
    noise = torch.randn(2, 1, 8, 8, generator=gen(5), dtype=torch.float64)
    # euler, 4 steps at t = 1, .75, .5, .25; interval [0.6, 1] guides the first two only
    calls = {}
    out = sample(model, spec, labels, guidance="pdg", scale=2.5, interval=(0.6, 1.0), sampler="euler", steps=4,
                 noise=noise, stats=calls)
    assert calls == {"forward": 4, "guidance": 8}
    x = noise.clone()
    model.eval()
    with torch.no_grad():
        for t in (1.0, 0.75, 0.5, 0.25):
            tt = torch.full((2,), t)
            if t >= 0.6:
                o = model.forward_guidance(torch.cat([x, x]).float(), torch.cat([tt, tt]),
                                           torch.cat([labels, torch.full_like(labels, 10)])).double()
                c, u = o.chunk(2)
                v = u + 2.5 * (c - u)
            else:
                v = model(x.float(), tt, labels).double()
            x = x - 0.25 * v
    torch.testing.assert_close(out, x.float())
    # PDG differs from CFG (the weak half skips the middle blocks)
    cfg = sample(model, spec, labels, guidance="cfg", scale=2.5, interval=(0.6, 1.0), sampler="euler", steps=4, noise=noise)
    assert not torch.allclose(out, cfg)


def test_guidance_applies_to_all_channels():
    spec, model = random_tiny(channels=4)
    noise = torch.randn(2, 4, 8, 8, generator=gen(6), dtype=torch.float64)
    a = sample(model, spec, [1, 2], guidance="none", sampler="euler", steps=1, noise=noise)
    b = sample(model, spec, [1, 2], guidance="cfg", scale=4.0, sampler="euler", steps=1, noise=noise)
    assert all((a[:, c] - b[:, c]).abs().max() > 1e-4 for c in range(4))


@pytest.mark.parametrize("sampler", ["sde", "heun", "ddpm"])
def test_same_seed_same_images(sampler):
    over = {"train": {"objective": "ddpm"}, "model__learn_sigma": True} if sampler == "ddpm" else {}
    spec, model = random_tiny(**over)
    a = sample(model, spec, [4, 5], guidance="pdg", scale=2.0, sampler=sampler, steps=5, generator=gen(7))
    b = sample(model, spec, [4, 5], guidance="pdg", scale=2.0, sampler=sampler, steps=5, generator=gen(7))
    c = sample(model, spec, [4, 5], guidance="pdg", scale=2.0, sampler=sampler, steps=5, generator=gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()


def test_sampling_restores_training_mode():
    spec, model = random_tiny()
    model.train()
    sample(model, spec, [1], sampler="euler", steps=1, generator=gen())
    assert model.training


def test_bad_guidance_and_labels():
    spec, model = random_tiny(passes=[])  # dense: no guidance graph
    with pytest.raises(SprintcError, match="pdg"):
        sample(model, spec, [1], guidance="pdg", scale=2.0, steps=2, generator=gen())
    sample(model, spec, [1], guidance="cfg", scale=2.0, sampler="euler", steps=1, generator=gen())  # CFG is fine
    with pytest.raises(SprintcError, match="out of range"):
        sample(model, spec, [10], guidance="none", steps=2, generator=gen())
    with pytest.raises(SprintcError, match="flow"):
        sample(model, spec, [1], sampler="ddim", steps=2, generator=gen())
    uspec = sprintc.load_spec(tiny_spec(model__num_classes=0, passes=[]))
    umodel = sprintc.build(uspec)
    with pytest.raises(SprintcError, match="unconditional"):
        sample(umodel, uspec, None, guidance="cfg", scale=2.0, noise=torch.randn(1, 4, 8, 8))
    out = sample(umodel, uspec, None, guidance="none", steps=2, noise=torch.randn(1, 4, 8, 8))
    assert out.shape == (1, 4, 8, 8)


def test_fixed_shape_steps_give_the_same_images():
    # a lowered step (e.g. a CUDA-graph replay) computes the guided prediction itself; the sampler must
    # route each step to the right kind and get the same result as calling the model
    from sprintc.targets_api import lower_sampling_step

    spec, model = random_tiny()
    used = []

    def step_for(kind, batch):
        used.append((kind, batch))
        return lower_sampling_step(model, spec.target, batch=batch, guidance=kind, device="cpu", copy_model=True)

    kw = dict(guidance="pdg", scale=2.0, interval=(0.5, 1.0), sampler="euler", steps=4)
    a = sample(model, spec, [1, 2], generator=gen(9), **kw)
    b = sample(model, spec, [1, 2], generator=gen(9), step_for=step_for, **kw)
    torch.testing.assert_close(a, b)
    assert set(used) == {("pdg", 2), ("none", 2)}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_steps_match_eager_on_cuda():
    from sprintc.sample import lower_for_sampling

    spec, model = random_tiny(target={"name": "eager", "dtype": "float32", "cuda_graphs": True})
    dev = torch.device("cuda")
    plain = sample(model.to(dev), spec, [1, 2, 3], generator=torch.Generator(dev).manual_seed(0), guidance="pdg",
                   scale=2.0, sampler="sde", steps=6)
    net, step_for = lower_for_sampling(model, spec, dev)
    assert step_for is not None
    graphed = sample(net, spec, [1, 2, 3], generator=torch.Generator(dev).manual_seed(0), guidance="pdg", scale=2.0,
                     sampler="sde", steps=6, step_for=step_for)
    torch.testing.assert_close(graphed, plain, atol=1e-4, rtol=1e-4)
    model.cpu()
