"""Token samplers: structured keeps exactly k per group, covers every group, no duplicates, uniform."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sprintc.routing import gather_tokens, plan_route, sample_ids, scatter_tokens, select_rows
from sprintc.spec import RoutePass


def group_of(idx, grid, g):
    coords = []
    for n in reversed(grid):
        coords.append(idx % n)
        idx = idx // n
    coords = coords[::-1]
    return tuple(c // e for c, e in zip(coords, g))


@settings(max_examples=40, deadline=None)
@given(g=st.sampled_from([2, 3, 4]), mult=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       video=st.booleans(), k_frac=st.floats(0.01, 0.99), batch=st.integers(1, 4), seed=st.integers(0, 999))
def test_structured_keeps_k_per_group(g, mult, video, k_frac, batch, seed):
    grid = ((2 * g,) if video else ()) + (mult[0] * g, mult[1] * g)
    size = g ** len(grid)
    k = max(1, min(size - 1, round(k_frac * size)))
    plan = plan_route(RoutePass(name="route", drop=1 - k / size, group=g), grid)
    assert plan.per_group == k
    ids = sample_ids(plan, batch, generator=torch.Generator().manual_seed(seed))
    groups = math.prod(n // g for n in grid)
    assert ids.shape == (batch, groups * k)
    for row in ids.tolist():
        assert len(set(row)) == len(row)                      # no duplicates
        assert all(0 <= i < math.prod(grid) for i in row)
        counts = {}
        for i in row:
            key = group_of(i, grid, (g,) * len(grid))
            counts[key] = counts.get(key, 0) + 1
        assert len(counts) == groups and set(counts.values()) == {k}  # every group, exactly k


def test_structured_uniform_within_group():
    plan = plan_route(RoutePass(name="route", drop=0.75), (4, 4))
    ids = sample_ids(plan, 4000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(ids.flatten(), minlength=16).float() / 4000
    assert torch.allclose(freq, torch.full((16,), 0.25), atol=0.03)  # each token kept with prob k/g^2


def test_random_sampler_fixed_count_no_duplicates():
    plan = plan_route(RoutePass(name="route", sampler="random", drop=0.6), (5, 5))
    assert plan.keep == 10
    ids = sample_ids(plan, 8, generator=torch.Generator().manual_seed(1))
    assert ids.shape == (8, 10)
    assert all(len(set(r)) == 10 for r in ids.tolist())


def test_protected_tokens_always_kept():
    plan = plan_route(RoutePass(name="route", drop=0.75, protected=[0]), (4, 4))
    ids = sample_ids(plan, 16, generator=torch.Generator().manual_seed(2))
    assert plan.tokens == 17 and ids.shape == (16, 5)
    assert (ids[:, 0] == 0).all() and (ids[:, 1:] >= 1).all()


def test_fresh_choice_per_sample_and_step():
    plan = plan_route(RoutePass(name="route", drop=0.75), (8, 8))
    gen = torch.Generator().manual_seed(3)
    a, b = sample_ids(plan, 4, generator=gen), sample_ids(plan, 4, generator=gen)
    assert not torch.equal(a, b) and not torch.equal(a[0], a[1])
    assert torch.equal(sample_ids(plan, 4, generator=torch.Generator().manual_seed(3)), a)  # seedable


@pytest.mark.parametrize("drop,grid", [(0.7, (4, 4)), (0.75, (3, 3)), (0.9, (6, 6))])
def test_unrealisable_ratio_lists_allowed(drop, grid):
    with pytest.raises(ValueError, match="ratios it allows"):
        plan_route(RoutePass(name="route", drop=drop), grid)


def test_reference_ratio_table():
    # 75% = g2 k1; 50% = g2 k2; 62.5% = g4 k6; 87.5% = g4 k2 (conformance README)
    for drop, g, k in [(0.75, 2, 1), (0.5, 2, 2), (0.625, 4, 6), (0.875, 4, 2)]:
        plan = plan_route(RoutePass(name="route", drop=drop), (16, 16))
        assert (plan.group[0], plan.per_group) == (g, k)


def test_gather_scatter_roundtrip():
    x = torch.randn(3, 16, 8)
    ids = torch.stack([torch.randperm(16)[:4] for _ in range(3)])
    fill = torch.randn(1, 1, 8)
    out = scatter_tokens(gather_tokens(x, ids), ids, fill, 16)
    kept = torch.zeros(3, 16, dtype=torch.bool).scatter(1, ids, True)
    assert torch.equal(out[kept], x[kept])
    assert torch.equal(out[~kept], fill.expand(3, 16, 8)[~kept])
    shared = torch.randn(16, 5)  # RoPE-like (N, d) shared by the batch
    assert torch.equal(gather_tokens(shared, ids, 0)[1], shared[ids[1]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 16, 8), (3, 16), (3, 16, 2, 4)])
def test_token_gather_and_row_selection_match_torch_ops_with_gradients(shape, dtype):
    # their backward copies gradients into zeros instead of adding them (no atomic adds): the same values
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    ids = torch.stack([torch.randperm(16)[:5] for _ in range(3)])
    rows = torch.tensor([0, 2])
    ours = select_rows(gather_tokens(x, ids, 1), rows)
    idx = ids.view(3, 5, *[1] * (len(shape) - 2)).expand(3, 5, *shape[2:])
    plain = torch.gather(x, 1, idx).index_select(0, rows)
    assert ours.dtype == dtype and torch.equal(ours, plain)
    g = torch.randn_like(plain)
    assert torch.equal(*(torch.autograd.grad(out, x, g)[0] for out in (ours, plain)))
    with torch.no_grad():
        assert torch.equal(select_rows(gather_tokens(x, ids, 1), rows), plain)
