"""Hand-written Triton kernels for CUDA, where Inductor's own code is measurably slower.

`qk_norm_rope(qkv, wq, wk, rope, eps)`: the attention's q/k RMSNorm and RoPE, read straight from the qkv
projection's output (B, N, 3 * D) and written as the (B, H, N, Dh) q, k, v that
scaled_dot_product_attention takes. One kernel forward, one backward that writes the whole dqkv (and
per-block partial sums of the two norm weights' gradients). Inductor compiles the same expression to
about five kernels with float32 intermediates (docs/PERFORMANCE.md). Registered with
`torch.library.triton_op`, so torch.compile traces into it (no graph break) and CUDA graphs capture it.
The rope argument is not differentiated (it is a buffer of angles, gathered per sample when routed).
Importing this module imports triton: do it only when a CUDA lowering asks for the kernels.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

@triton.jit
def _rotate(y, R: tl.constexpr, BLOCK_D: tl.constexpr):
    """(y0, y1, y2, y3, ...) -> (-y1, y0, -y3, y2, ...): RoPE's partner of each element (pairs stay in-thread)."""
    even, odd = tl.split(tl.reshape(y, [R, BLOCK_D // 2, 2]))
    return tl.reshape(tl.join(-odd, even), [R, BLOCK_D])


@triton.jit
def _norm_rope_fwd(src, w, cos, sin, dst, eps, H: tl.constexpr, DH: tl.constexpr, BLOCK_D: tl.constexpr,
                   HAS_ROPE: tl.constexpr, DST_H: tl.constexpr):
    """One token's H heads: RMSNorm with weight w, then RoPE; src rows are contiguous, dst rows DST_H apart."""
    h = tl.arange(0, H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (d < DH) & (h >= 0)
    x = tl.load(src + h * DH + d, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 1) / DH + eps)[:, None]
    y = x * rstd * tl.load(w + d, mask=d < DH, other=0.0).to(tl.float32)
    if HAS_ROPE:
        y = y * cos + _rotate(y, H, BLOCK_D) * sin
    tl.store(dst + h * DST_H + d, y, mask=mask)


ONE_TOKEN = [triton.Config({}, num_warps=8)]  # a token's 3 x 16 x 72 values: 8 warps keep registers and shuffles low


@triton.autotune(configs=ONE_TOKEN, key=[])
@triton.jit
def _fwd_kernel(qkv, wq, wk, rope, out_q, out_k, out_v, s_tok, s_rb, s_rn, eps, N: tl.constexpr, H: tl.constexpr,
                DH: tl.constexpr, BLOCK_D: tl.constexpr, HAS_ROPE: tl.constexpr):
    # one token per program: its q, k and v heads are 3 x H contiguous rows of DH in qkv
    tok = tl.program_id(0)
    b, n = tok // N, tok % N
    d = tl.arange(0, BLOCK_D)[None, :]
    cos, sin = d * 0.0, d * 0.0
    if HAS_ROPE:
        table = rope + b * s_rb + n * s_rn + d
        cos = tl.load(table, mask=d < DH, other=0.0)
        sin = tl.load(table + DH, mask=d < DH, other=0.0)
    src = qkv + tok * s_tok
    dst = tok * H * DH  # outputs are (B, H, N, DH) views of token-major (B, N, H, DH) memory
    _norm_rope_fwd(src, wq, cos, sin, out_q + dst, eps, H, DH, BLOCK_D, HAS_ROPE, DH)
    _norm_rope_fwd(src + H * DH, wk, cos, sin, out_k + dst, eps, H, DH, BLOCK_D, HAS_ROPE, DH)
    h = tl.arange(0, H)[:, None]
    mask = (d < DH) & (h >= 0)
    tl.store(out_v + dst + h * DH + d, tl.load(src + 2 * H * DH + h * DH + d, mask=mask), mask=mask)


@triton.jit
def _norm_rope_bwd(g, src, w, cos, sin, dsrc, dw_part, eps, H: tl.constexpr, DH: tl.constexpr,
                   BLOCK_D: tl.constexpr, HAS_ROPE: tl.constexpr):
    """Gradients of one token's H heads: g rows (head stride s_gh) in, dsrc rows out, dw partial sum stored."""
    h = tl.arange(0, H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (d < DH) & (h >= 0)
    gy = tl.load(g + d, mask=mask, other=0.0).to(tl.float32)
    if HAS_ROPE:  # the rotation's transpose: dy = g cos + partner'(g sin), partner'(z) = (z1, -z0, z3, -z2, ...)
        gy = gy * cos - _rotate(gy * sin, H, BLOCK_D)
    x = tl.load(src + h * DH + d, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, 1) / DH + eps)[:, None]
    tl.store(dw_part + d, tl.sum(gy * x * rstd, 0)[None, :], mask=d < DH)
    u = gy * tl.load(w + d, mask=d < DH, other=0.0).to(tl.float32)
    dot = tl.sum(u * x, 1)[:, None] / DH
    tl.store(dsrc + h * DH + d, rstd * u - x * (rstd * rstd * rstd * dot), mask=mask)


@triton.autotune(configs=ONE_TOKEN, key=[])
@triton.jit
def _bwd_kernel(dq, dk, dv, qkv, wq, wk, rope, dqkv, dwq_part, dwk_part, s_tok, s_rb, s_rn, eps,
                N: tl.constexpr, H: tl.constexpr, DH: tl.constexpr, BLOCK_D: tl.constexpr, HAS_ROPE: tl.constexpr):
    tok = tl.program_id(0)
    b, n = tok // N, tok % N
    h = tl.arange(0, H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    cos, sin = d * 0.0, d * 0.0
    if HAS_ROPE:
        table = rope + b * s_rb + n * s_rn + d
        cos = tl.load(table, mask=d < DH, other=0.0)
        sin = tl.load(table + DH, mask=d < DH, other=0.0)
    src, dsrc = qkv + tok * s_tok, dqkv + tok * s_tok  # dqkv has qkv's (contiguous) layout
    gq = tok * H * DH + h * DH  # gradients in the outputs' token-major layout
    _norm_rope_bwd(dq + gq, src, wq, cos, sin, dsrc, dwq_part + tok * DH, eps,
                   H, DH, BLOCK_D, HAS_ROPE)
    _norm_rope_bwd(dk + gq, src + H * DH, wk, cos, sin, dsrc + H * DH,
                   dwk_part + tok * DH, eps, H, DH, BLOCK_D, HAS_ROPE)
    mask = (d < DH) & (h >= 0)
    gv = tl.load(dv + gq + d, mask=mask)
    tl.store(dsrc + 2 * H * DH + h * DH + d, gv, mask=mask)


def _shapes(qkv, wq, rope):
    B, N, D3 = qkv.shape
    D, DH = D3 // 3, wq.shape[0]
    H = D // DH
    if D3 != 3 * D or D % DH or DH % 2 or H & (H - 1):
        raise ValueError(f"qk_norm_rope: qkv {tuple(qkv.shape)} does not split into 3 x heads x {DH} "
                         "with an even head width and a power-of-two number of heads")
    if rope is None:
        return B, N, H, DH, 0, 0, qkv
    rope = rope.contiguous()
    return B, N, H, DH, (rope.stride(0) if rope.dim() == 3 else 0), rope.stride(-2), rope


def _token_major(like, B, N, H, DH):
    """A (B, H, N, DH) tensor whose memory is (B, N, H, DH): one token's heads are contiguous, as in qkv, so the
    kernels read and write whole tokens; attention takes any layout with contiguous rows."""
    return torch.empty_strided((B, H, N, DH), (N * H * DH, DH, H * DH, 1), dtype=like.dtype, device=like.device)


@triton_op("sprintc::qk_norm_rope", mutates_args={})
def qk_norm_rope(qkv: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, rope: Optional[torch.Tensor],
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv = qkv.contiguous()
    B, N, H, DH, s_rb, s_rn, table = _shapes(qkv, wq, rope)
    q, k, v = (_token_major(qkv, B, N, H, DH) for _ in range(3))
    wrap_triton(_fwd_kernel)[(B * N,)](qkv, wq, wk, table, q, k, v, qkv.stride(1), s_rb, s_rn, eps, N=N, H=H, DH=DH,
                                       BLOCK_D=triton.next_power_of_2(DH), HAS_ROPE=rope is not None)
    return q, k, v


@triton_op("sprintc::qk_norm_rope_backward", mutates_args={})
def qk_norm_rope_backward(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, qkv: torch.Tensor,
                          wq: torch.Tensor, wk: torch.Tensor, rope: Optional[torch.Tensor],
                          eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv = qkv.contiguous()
    B, N, H, DH, s_rb, s_rn, table = _shapes(qkv, wq, rope)
    dqkv = torch.empty_like(qkv)
    dwq_part, dwk_part = (qkv.new_empty(B * N, DH, dtype=torch.float32) for _ in range(2))
    dq, dk, dv = (g if g.stride() == _token_major(g, B, N, H, DH).stride() else g.transpose(1, 2).contiguous().transpose(1, 2)
                  for g in (dq, dk, dv))  # attention's backward gives them the layout of q, k, v: no copy
    wrap_triton(_bwd_kernel)[(B * N,)](dq, dk, dv, qkv, wq, wk, table, dqkv, dwq_part, dwk_part, qkv.stride(1),
                                       s_rb, s_rn, eps, N=N, H=H, DH=DH,
                                       BLOCK_D=triton.next_power_of_2(DH), HAS_ROPE=rope is not None)
    return dqkv, dwq_part.sum(0).to(wq.dtype), dwk_part.sum(0).to(wk.dtype)


def _setup_context(ctx, inputs, output):
    qkv, wq, wk, rope, eps = inputs
    ctx.save_for_backward(qkv, wq, wk, rope)
    ctx.eps = eps


def backward_expression(dq, dk, dv, qkv, wq, wk, rope, eps):
    """qk_norm_rope_backward's numbers as torch ops, for Inductor to fuse into its own kernels."""
    B, N, D3 = qkv.shape
    DH = wq.shape[0]
    x = qkv.view(B, N, 3, D3 // 3 // DH, DH).permute(2, 0, 3, 1, 4)  # (3, B, H, N, DH) view
    grads = []
    for g, xi, w in ((dq, x[0], wq), (dk, x[1], wk)):
        g, xi = g.float(), xi.float()
        if rope is not None:  # the rotation's transpose
            cos, sin = rope.unsqueeze(-3).float().chunk(2, -1)
            gs = g * sin
            g = g * cos - torch.stack((-gs[..., 1::2], gs[..., 0::2]), -1).flatten(-2)
        rstd = torch.rsqrt(xi.pow(2).mean(-1, keepdim=True) + eps)
        u = g * w.float()
        grads.append((rstd * u - xi * rstd.pow(3) * (u * xi).mean(-1, keepdim=True),
                      (g * xi * rstd).sum((0, 1, 2)).to(w.dtype)))
    dqkv = torch.stack((grads[0][0].to(qkv.dtype), grads[1][0].to(qkv.dtype), dv.to(qkv.dtype)))
    return dqkv.permute(1, 3, 0, 2, 4).reshape(B, N, D3), grads[0][1], grads[1][1]


# Which backward runs: "triton" (qk_norm_rope_backward) or "torch" (backward_expression, fused by Inductor).
# A developer's switch for A/B runs on a GPU (docs/PERFORMANCE.md), read when the backward is traced.
BACKWARD = os.environ.get("SPRINTC_QK_BACKWARD", "triton")


def _backward(ctx, dq, dk, dv):
    qkv, wq, wk, rope = ctx.saved_tensors
    run = backward_expression if BACKWARD == "torch" else qk_norm_rope_backward
    dqkv, dwq, dwk = run(dq, dk, dv, qkv, wq, wk, rope, ctx.eps)
    return dqkv, dwq, dwk, None, None


qk_norm_rope.register_autograd(_backward, setup_context=_setup_context)


def use_kernels(model: torch.nn.Module) -> int:
    """Point every sprintc Attention with RMS q/k norms at qk_norm_rope (used on CUDA tensors only); the count."""
    from sprintc.model import Attention, RMSNorm

    found = [m for m in model.modules() if isinstance(m, Attention) and isinstance(m.q_norm, RMSNorm)]
    for m in found:
        m.fused_qk = True
    return len(found)
