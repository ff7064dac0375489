"""Token routing: which tokens the middle blocks see (samplers) and the gather / scatter ops.

The kept count M depends only on the grid and the configured ratio, so every routed step has the same
shapes (no recompiles). Sampling runs on the device with a generator the runtime owns: no host sync.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class RoutePlan:
    grid: tuple[int, ...]         # token grid of the routable tokens: (H, W) or (T, H, W)
    sampler: str                  # "structured" | "random"
    keep: int                     # M: routable tokens kept per sample
    group: tuple[int, ...] = ()   # structured: group extent per grid axis
    per_group: int = 0            # structured: tokens kept per group
    protected: tuple[int, ...] = field(default_factory=tuple)  # indices always kept (prefix tokens)

    @property
    def routable(self) -> int:
        return math.prod(self.grid)

    @property
    def tokens(self) -> int:
        return self.routable + len(self.protected)

    @property
    def kept(self) -> int:
        return self.keep + len(self.protected)


def allowed_drops(grid: tuple[int, ...], max_group: int = 8) -> list[str]:
    """Each drop ratio a structured sampler can realise on this grid, with the smallest group doing it."""
    best = {}
    for g in range(max_group, 1, -1):
        if all(n % g == 0 for n in grid):
            size = g ** len(grid)
            for k in range(1, size):
                best[round(1 - k / size, 6)] = f"{1 - k / size:g} (group {g}, keep {k})"
    return [best[r] for r in sorted(best)]


def plan_route(route, grid: tuple[int, ...], protected: tuple[int, ...] | None = None) -> RoutePlan:
    """Turn a `route` pass config into a plan, or raise ValueError saying which ratios the grid allows."""
    protected = tuple(route.protected) if protected is None else protected
    n = math.prod(grid)
    if route.drop == 0:
        return RoutePlan(tuple(grid), "random", n, protected=protected)
    if route.sampler == "random":
        return RoutePlan(tuple(grid), "random", max(1, round(n * (1 - route.drop))), protected=protected)
    dims = len(grid)
    groups = [route.group] if route.group else [g for g in range(2, 17) if all(s % g == 0 for s in grid)]
    for g in groups:
        if any(s % g for s in grid):
            raise ValueError(f"drop: route.group {g} does not divide the token grid {'x'.join(map(str, grid))}")
        size = g ** dims
        k = (1 - route.drop) * size
        if abs(k - round(k)) < 1e-6 and round(k) >= 1:
            k = round(k)
            return RoutePlan(tuple(grid), "structured", k * n // size, (g,) * dims, k, protected)
    choices = allowed_drops(grid) if not route.group else [f"{1 - k / route.group ** dims:g}" for k in range(1, route.group ** dims)]
    raise ValueError(
        f"drop: a structured sampler cannot drop {route.drop:g} of a {'x'.join(map(str, grid))} token grid"
        + (f" with group {route.group}" if route.group else "")
        + f"; ratios it allows: {', '.join(choices) or 'none (the grid has no divisor >= 2; use sampler: random)'}"
    )


def sample_ids(plan: RoutePlan, batch: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """ids_keep (B, M) of the tokens the middle blocks see: protected first, then the sampled ones."""
    n = plan.routable
    if plan.sampler == "random":
        ids = torch.rand(batch, n, device=device, generator=generator).argsort(1)[:, : plan.keep]
    else:
        g, k = plan.group, plan.per_group
        ngroups = [s // e for s, e in zip(plan.grid, g)]
        local = torch.rand(batch, math.prod(ngroups), math.prod(g), device=device, generator=generator).argsort(-1)[..., :k]
        # token index = sum over axes of (group_index * g + offset_in_group) * stride
        gidx = torch.arange(math.prod(ngroups), device=device)
        ids = torch.zeros(batch, math.prod(ngroups), k, dtype=torch.long, device=device)
        stride, gdiv, ldiv = 1, 1, 1
        for axis in reversed(range(len(plan.grid))):
            gpos = (gidx // gdiv) % ngroups[axis]
            lpos = (local // ldiv) % g[axis]
            ids += (gpos[None, :, None] * g[axis] + lpos) * stride
            stride *= plan.grid[axis]
            gdiv *= ngroups[axis]
            ldiv *= g[axis]
        ids = ids.flatten(1)
    if plan.protected:
        # routable tokens sit after/among the protected ones: map routable index -> absolute index
        rest = torch.tensor([i for i in range(plan.tokens) if i not in set(plan.protected)], device=device)
        ids = torch.cat([torch.tensor(plan.protected, device=device).expand(batch, -1), rest[ids]], 1)
    return ids


# --------------------------------------------------------------------------------- graph ops
# These are the call_function targets the route / path_drop / pdg passes insert. fx leaves them as
# single nodes (torch.fx.wrap), so the block graph stays readable.

class _TakeRows(torch.autograd.Function):
    """x.index_select(0, rows) for distinct rows, whose gradient is copied into zeros (index_copy). index_select's own
    backward adds it (index_add), which on CUDA is a kernel of atomic adds: 0.13 ms per step for the routed token
    stream's rows at batch 64 on an H100 (docs/PERFORMANCE.md, session AD). With distinct rows the two are equal."""

    @staticmethod
    def forward(ctx, x, rows):
        ctx.save_for_backward(rows)
        ctx.shape = x.shape
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        (rows,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).index_copy_(0, rows, grad), None


def take_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x.index_select(0, rows) for distinct rows, with a backward without atomic adds."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _TakeRows.apply(x, rows)
    return x.index_select(0, rows)


@torch.fx.wrap
def gather_tokens(x: torch.Tensor, ids_keep: torch.Tensor | None, token_dim: int = -2) -> torch.Tensor:
    """x[..., ids_keep, ...] per sample along token_dim. x may lack the batch dim (RoPE angles (N, d))."""
    if ids_keep is None:
        return x
    token_dim = token_dim % x.dim()
    if token_dim == 0:  # (N, ...) shared by all samples
        return x[ids_keep]
    if token_dim == 1 and x.shape[0] == ids_keep.shape[0]:  # (B, N, ...): whole rows of the flattened batch
        b, n = x.shape[:2]
        flat = (ids_keep + torch.arange(b, device=ids_keep.device).unsqueeze(1) * n).flatten()
        return take_rows(x.flatten(0, 1), flat).unflatten(0, tuple(ids_keep.shape))
    if x.shape[0] == 1 and ids_keep.shape[0] != 1:
        x = x.expand(ids_keep.shape[0], *x.shape[1:])
    shape = [1] * x.dim()
    shape[0], shape[token_dim] = ids_keep.shape
    idx = ids_keep.view(shape).expand(*x.shape[:token_dim], ids_keep.shape[1], *x.shape[token_dim + 1 :])
    return torch.gather(x, token_dim, idx)


@torch.fx.wrap
def scatter_tokens(m: torch.Tensor, ids_keep: torch.Tensor | None, fill: torch.Tensor, tokens: int) -> torch.Tensor:
    """Put each kept token back at its position; every dropped position holds `fill` (1, 1, D)."""
    if ids_keep is None:
        return m
    b, _, d = m.shape
    out = fill.to(m.dtype).expand(b, tokens, d).clone()
    return out.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, d), m)


@torch.fx.wrap
def select_rows(x: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    """The samples `rows` (C,) of x: those the middle blocks run on (all of them when rows is None)."""
    if rows is None or x is None:
        return x
    return take_rows(x, rows)


@torch.fx.wrap
def drop_path(m: torch.Tensor, dropped: torch.Tensor | None, fill: torch.Tensor,
              rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample where `dropped` (B,) is true, the whole middle output becomes the mask token. Given `rows`, m holds
    only those samples' middle outputs (select_rows) and every other sample's is the mask token."""
    if rows is not None:
        if dropped is None:
            raise ValueError("middle_rows needs path_drop: the samples it leaves out skip the middle path")
        full = fill.to(m.dtype).expand(dropped.shape[0], *m.shape[1:]).clone()
        m = full.index_copy(0, rows, m)
    if dropped is None:
        return m
    return torch.where(dropped.view(-1, 1, 1), fill.to(m.dtype), m)


def draw_path_drop(p: float, batch: int, skip: bool = True, device=None, generator=None, groups: int = 1):
    """Training-time path drop for a batch: (dropped (B,) bool, middle_rows (groups, C) long or None).

    skip=False: each sample is dropped independently with probability p (the reference's draw); every sample runs
    the middle blocks and the dropped ones' outputs are replaced. skip=True: in each group of B / groups samples (a
    rank's share of the global batch) k = floor(p * b) samples, chosen uniformly, are dropped and skip the middle
    blocks, and one more is dropped with probability p * b - k (by the mask alone): each sample is still dropped with
    probability p, and the middle runs on b - k samples, the same count every step (no recompiles). middle_rows are
    indices within the group, in batch order; None when k is 0."""
    if not skip:
        return torch.rand(batch, device=device, generator=generator) < p, None
    b = batch // groups
    u = torch.rand(groups, b, device=device, generator=generator)
    extra = torch.rand(groups, 1, device=device, generator=generator)
    k = min(int(p * b), b - 1)  # at least one sample stays for the middle
    order = u.argsort(1)  # a uniform random order of each group
    place = order.argsort(1)
    dropped = (place < k) | ((place == k) & (extra < p * b - k))
    rows = order[:, k:].sort(1).values if k else None
    return dropped.flatten(), rows


@torch.fx.wrap
def first_half(x: torch.Tensor) -> torch.Tensor:
    return x[: x.shape[0] // 2]


@torch.fx.wrap
def cat_mask_half(m_cond: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """[middle output of the conditional half; mask token everywhere for the unconditional half]."""
    return torch.cat([m_cond, fill.to(m_cond.dtype).expand_as(m_cond)], 0)
