"""Variants of the attention's q/k RMSNorm + RoPE prologue, written as torch ops for Inductor, and the
means to compare them (docs/PERFORMANCE.md, run D).

    python3 scripts/gpu_attn_variants.py check                      # CPU: every variant == v0 (float32, grads too)
    python3 scripts/gpu_attn_variants.py micro --variants v0,v1 --json f.json   # CUDA: one block, fwd+bwd, CUDA graph
    python3 scripts/gpu_attn_variants.py --variant v1 bench SPEC ...           # any sprintc command, variant patched in

Variants (all compute the reference's q' = rope(rmsnorm(q)), same for k):
  v0  as shipped: q, k, v permuted to (B, H, N, Dh); norm in float32, cast, RoPE in bf16 (rotate_half: unbind/stack)
  v1  token-major (B, N, H, Dh) with no permute (SDPA gets transposed views); norm and RoPE in float32, one cast;
      RoPE on (x0, x1) pairs with half-size cos/sin tables
  v2  v1 but rounded as v0 (norm cast to bf16, RoPE in bf16)
  v3  v0's head-major layout with v1's float32 pair RoPE
  v4  v1 with v0's rotate_half and full tables
  v5  v0 with each head's q and k channels reordered from interleaved pairs to (evens, odds): the qkv weight's
      and bias's q/k rows and the norm weights reordered (a copy fused into the bf16 cast), RoPE then rotates two
      contiguous halves (no parity indexing); q.k is unchanged by one order for both. RoPE tables in that order.
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F

import sprintc.model as M

SHIPPED = M.Attention.forward


def _rms(x, norm):  # float32 result, the norm's weight applied
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.float()


def _rope_pairs(x, cos, sin):  # x (..., Dh); cos / sin (..., Dh / 2), one angle per (x0, x1) pair
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), -1).flatten(-2)


def _sdpa_token_major(self, q, k, v, B, N, D):
    x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return self.proj(x.transpose(1, 2).reshape(B, N, D))


def _plain(self, rope):
    return rope is None or not (isinstance(self.q_norm, M.RMSNorm) and isinstance(self.k_norm, M.RMSNorm))


def v1(self, x, rope=None):
    if _plain(self, rope):
        return SHIPPED(self, x, rope)
    B, N, D = x.shape
    q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).unbind(2)
    cos, sin = rope.unsqueeze(-2).chunk(2, -1)  # (N, 1, Dh) or (B, M, 1, Dh)
    cos, sin = cos[..., 0::2].float(), sin[..., 0::2].float()
    q, k = _rope_pairs(_rms(q, self.q_norm), cos, sin).to(v.dtype), _rope_pairs(_rms(k, self.k_norm), cos, sin).to(v.dtype)
    return _sdpa_token_major(self, q, k, v, B, N, D)


def v2(self, x, rope=None):
    if _plain(self, rope):
        return SHIPPED(self, x, rope)
    B, N, D = x.shape
    q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).unbind(2)
    cos, sin = rope.unsqueeze(-2).to(v.dtype).chunk(2, -1)
    cos, sin = cos[..., 0::2], sin[..., 0::2]
    q, k = _rope_pairs(_rms(q, self.q_norm).to(v.dtype), cos, sin), _rope_pairs(_rms(k, self.k_norm).to(v.dtype), cos, sin)
    return _sdpa_token_major(self, q, k, v, B, N, D)


def v3(self, x, rope=None):
    if _plain(self, rope):
        return SHIPPED(self, x, rope)
    B, N, D = x.shape
    q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
    cos, sin = rope.unsqueeze(-3).chunk(2, -1)  # (1, N, Dh) or (B, 1, M, Dh)
    cos, sin = cos[..., 0::2].float(), sin[..., 0::2].float()
    q, k = _rope_pairs(_rms(q, self.q_norm), cos, sin).to(v.dtype), _rope_pairs(_rms(k, self.k_norm), cos, sin).to(v.dtype)
    x = F.scaled_dot_product_attention(q, k, v)
    return self.proj(x.transpose(1, 2).reshape(B, N, D))


def v4(self, x, rope=None):
    if _plain(self, rope):
        return SHIPPED(self, x, rope)
    B, N, D = x.shape
    q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).unbind(2)
    cos, sin = rope.unsqueeze(-2).float().chunk(2, -1)
    q, k = _rms(q, self.q_norm), _rms(k, self.k_norm)
    q, k = (q * cos + M.rotate_half(q) * sin).to(v.dtype), (k * cos + M.rotate_half(k) * sin).to(v.dtype)
    return _sdpa_token_major(self, q, k, v, B, N, D)


def _halves(t, groups=1):  # (groups * Dh, ...) rows, each group's interleaved pairs -> (evens, odds)
    return t.unflatten(0, (groups, -1, 2)).transpose(1, 2).flatten(0, 2)


def halves_table(angles):  # reference [cos | sin] (..., 2 Dh), equal angles per pair -> [c, c | s, s] per half
    cos, sin = angles.chunk(2, -1)
    c, s = cos[..., 0::2], sin[..., 0::2]
    return torch.cat([c, c, s, s], -1)


def v5(self, x, rope=None):
    if _plain(self, rope):
        return SHIPPED(self, x, rope)
    B, N, D = x.shape
    H = self.heads
    w, b = self.qkv.weight, self.qkv.bias
    w, b = torch.cat([_halves(w[: 2 * D], 2 * H), w[2 * D :]]), torch.cat([_halves(b[: 2 * D], 2 * H), b[2 * D :]])
    q, k, v = F.linear(x, w, b).view(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    qf, kf = q.float(), k.float()
    q = (qf * torch.rsqrt(qf.pow(2).mean(-1, keepdim=True) + self.q_norm.eps) * _halves(self.q_norm.weight).float()).to(v.dtype)
    k = (kf * torch.rsqrt(kf.pow(2).mean(-1, keepdim=True) + self.k_norm.eps) * _halves(self.k_norm.weight).float()).to(v.dtype)
    cos, sin = rope.unsqueeze(-3).to(q.dtype).chunk(2, -1)  # already in halves order (halves_table)

    def rot(t):
        t1, t2 = t.chunk(2, -1)
        return torch.cat((-t2, t1), -1)

    q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    x = F.scaled_dot_product_attention(q, k, v)
    return self.proj(x.transpose(1, 2).reshape(B, N, D))


VARIANTS = {"v0": SHIPPED, "v1": v1, "v2": v2, "v3": v3, "v4": v4, "v5": v5}
TABLES = {"v5": halves_table}  # variants that want the RoPE table in another channel order


def use(name):
    """Patch variant `name` in: Attention.forward and, where it needs one, the RoPE table's order."""
    M.Attention.forward = VARIANTS[name]
    M.rope_angles = lambda *a, **k: TABLES.get(name, lambda t: t)(ANGLES(*a, **k))


ANGLES = M.rope_angles


def _block(spec_name, device, seed=0):
    from sprintc.spec import load_spec

    m = load_spec(spec_name).model
    torch.manual_seed(seed)
    blk = M.Block(m).to(device)
    for p in blk.parameters():  # random norm weights and modulation, so nothing is trivially 1 or 0
        torch.nn.init.normal_(p, std=0.05 if p.dim() > 1 else 0.5)
    return m, blk


def _inputs(m, B, N, routed, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    angles = M.rope_angles(m.grid, m.width // m.heads, m.rope_theta)  # the patched variant's order
    if routed:  # each sample keeps its own N of the grid's tokens, RoPE angles gathered likewise
        ids = torch.stack([torch.randperm(angles.shape[0], generator=g)[:N] for _ in range(B)])
        rope = angles[ids]
    else:
        rope = angles[:N]
    x = torch.randn(B, N, m.width, generator=g)
    c = torch.randn(B, m.width, generator=g)
    return x.to(device), c.to(device), rope.to(device)


def check():
    """float32, CPU: forward and every gradient of each variant equal v0's."""
    m, blk = _block("digits_sprint", "cpu")
    worst = 0.0
    for routed in (False, True):
        ref = None
        for name in VARIANTS:
            use(name)
            x, c, rope = _inputs(m, 3, m.tokens // (2 if routed else 1), routed, "cpu")
            blk.zero_grad(set_to_none=True)
            xg = x.clone().requires_grad_()
            out = blk(xg, c, rope)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            got = [out, xg.grad] + [p.grad for p in blk.parameters()]
            if ref is None:
                ref = got
                continue
            for a, b in zip(got, ref):
                err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                worst = max(worst, err)
                if err > 1e-5:
                    raise SystemExit(f"{name} differs from v0 (routed={routed}): relative error {err:.2e}")
    use("v0")
    print(f"all variants equal v0 in float32 (worst relative error {worst:.1e})")


def micro(variants, B, json_path, steps=20):
    """One XL block, forward + backward (input gradient too), bf16 autocast, compiled, in a CUDA graph."""
    dev = torch.device("cuda")
    rows = []
    for name in variants:
        use(name)
        for routed in (True, False):
            torch._dynamo.reset()
            m, blk = _block("sit_xl", dev)
            x, c, rope = _inputs(m, B, 64 if routed else 256, routed, dev)
            x.requires_grad_()
            gy = torch.randn_like(x)
            step = torch.compile(blk, fullgraph=True, dynamic=False)

            def fwd_bwd():
                with torch.autocast("cuda", torch.bfloat16):
                    out = step(x, c, rope)
                out.backward(gy)

            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    fwd_bwd()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fwd_bwd()
            times = []
            for _ in range(steps):
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                for _ in range(5):
                    graph.replay()
                e1.record()
                torch.cuda.synchronize()
                times.append(e0.elapsed_time(e1) / 5)
            times.sort()
            with torch.autocast("cuda", torch.bfloat16):
                out = step(x, c, rope).float()
            r = dict(variant=name, routed=routed, batch=B, tokens=x.shape[1], ms=round(times[len(times) // 2], 4),
                     out_checksum=round(out.double().abs().mean().item(), 6))
            print(json.dumps(r), flush=True)
            rows.append(r)
            del graph, step, blk
            torch.cuda.empty_cache()
    use("v0")
    if json_path:
        json.dump(rows, open(json_path, "w"), indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--variant":
        use(sys.argv[2])
        from sprintc.cli import main

        sys.exit(main(sys.argv[3:]))
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["check", "micro"])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json")
    a = ap.parse_args()
    check() if a.what == "check" else micro(a.variants.split(","), a.batch, a.json)
