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

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

BLOCK_ROWS = 32  # (b, n, h) rows per program


@triton.jit
def _pairs(ptr, offs, p, mask):
    """The even and odd elements of each row (RoPE rotates interleaved pairs), in float32."""
    even = tl.load(ptr + offs[:, None] + 2 * p[None, :], mask=mask, other=0.0).to(tl.float32)
    odd = tl.load(ptr + offs[:, None] + 2 * p[None, :] + 1, mask=mask, other=0.0).to(tl.float32)
    return even, odd


@triton.jit
def _store_pairs(ptr, offs, p, mask, even, odd):
    tl.store(ptr + offs[:, None] + 2 * p[None, :], even, mask=mask)
    tl.store(ptr + offs[:, None] + 2 * p[None, :] + 1, odd, mask=mask)


@triton.jit
def _weight_pairs(w, p, DH: tl.constexpr):
    even = tl.load(w + 2 * p, mask=p < DH // 2, other=0.0).to(tl.float32)
    odd = tl.load(w + 2 * p + 1, mask=p < DH // 2, other=0.0).to(tl.float32)
    return even[None, :], odd[None, :]


@triton.jit
def _rope_table(rope, b, n, s_rb, s_rn, p, mask, DH: tl.constexpr):
    offs = b * s_rb + n * s_rn
    cos_e, cos_o = _pairs(rope, offs, p, mask)
    sin_e, sin_o = _pairs(rope + DH, offs, p, mask)
    return cos_e, cos_o, sin_e, sin_o


@triton.jit
def _fwd_kernel(qkv, wq, wk, rope, out_q, out_k, out_v, R, N, H, s_qb, s_qn, s_rb, s_rn, eps,
                D: tl.constexpr, DH: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
                HAS_ROPE: tl.constexpr):
    which = tl.program_id(1)  # 0: q, 1: k, 2: v
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # rows over (b, n, h)
    b, n, h = rows // (N * H), (rows // H) % N, rows % H
    p = tl.arange(0, BLOCK_P)
    mask = (rows < R)[:, None] & (p < DH // 2)[None, :]
    src = b * s_qb + n * s_qn + which * D + h * DH
    dst = ((b * H + h) * N + n) * DH
    xe, xo = _pairs(qkv, src, p, mask)
    if which == 2:
        _store_pairs(out_v, dst, p, mask, xe, xo)
    else:
        if which == 0:
            we, wo = _weight_pairs(wq, p, DH)
        else:
            we, wo = _weight_pairs(wk, p, DH)
        rstd = tl.rsqrt(tl.sum(xe * xe + xo * xo, 1) / DH + eps)[:, None]
        ye, yo = xe * rstd * we, xo * rstd * wo
        if HAS_ROPE:
            cos_e, cos_o, sin_e, sin_o = _rope_table(rope, b, n, s_rb, s_rn, p, mask, DH)
            ye, yo = ye * cos_e - yo * sin_e, yo * cos_o + ye * sin_o
        if which == 0:
            _store_pairs(out_q, dst, p, mask, ye, yo)
        else:
            _store_pairs(out_k, dst, p, mask, ye, yo)


@triton.jit
def _bwd_rows(g, s_gb, s_gh, s_gn, qkv, w, rope, dqkv, dw_part, src, b, n, h, p, mask, s_rb, s_rn, eps,
              DH: tl.constexpr, HAS_ROPE: tl.constexpr):
    ge, go = _pairs(g, b * s_gb + h * s_gh + n * s_gn, p, mask)
    if HAS_ROPE:  # the rotation's transpose
        cos_e, cos_o, sin_e, sin_o = _rope_table(rope, b, n, s_rb, s_rn, p, mask, DH)
        ge, go = ge * cos_e + go * sin_o, go * cos_o - ge * sin_e
    xe, xo = _pairs(qkv, src, p, mask)
    we, wo = _weight_pairs(w, p, DH)
    rstd = tl.rsqrt(tl.sum(xe * xe + xo * xo, 1) / DH + eps)[:, None]
    part = dw_part + tl.program_id(0) * DH + 2 * p  # this program's share of the weight's gradient
    tl.store(part, tl.sum(ge * xe * rstd, 0), mask=p < DH // 2)
    tl.store(part + 1, tl.sum(go * xo * rstd, 0), mask=p < DH // 2)
    ue, uo = ge * we, go * wo
    dot = tl.sum(ue * xe + uo * xo, 1)[:, None] / DH
    _store_pairs(dqkv, src, p, mask, rstd * ue - xe * rstd * rstd * rstd * dot,
                 rstd * uo - xo * rstd * rstd * rstd * dot)


@triton.jit
def _bwd_kernel(dq, dk, dv, qkv, wq, wk, rope, dqkv, dwq_part, dwk_part, R, N, H, s_qb, s_qn, s_rb, s_rn, eps,
                s_qgb, s_qgh, s_qgn, s_kgb, s_kgh, s_kgn, s_vgb, s_vgh, s_vgn,
                D: tl.constexpr, DH: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
                HAS_ROPE: tl.constexpr):
    which = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    b, n, h = rows // (N * H), (rows // H) % N, rows % H
    p = tl.arange(0, BLOCK_P)
    mask = (rows < R)[:, None] & (p < DH // 2)[None, :]
    src = b * s_qb + n * s_qn + which * D + h * DH  # dqkv has qkv's (contiguous) layout
    if which == 0:
        _bwd_rows(dq, s_qgb, s_qgh, s_qgn, qkv, wq, rope, dqkv, dwq_part, src, b, n, h, p, mask, s_rb, s_rn, eps,
                  DH, HAS_ROPE)
    elif which == 1:
        _bwd_rows(dk, s_kgb, s_kgh, s_kgn, qkv, wk, rope, dqkv, dwk_part, src, b, n, h, p, mask, s_rb, s_rn, eps,
                  DH, HAS_ROPE)
    else:
        ge, go = _pairs(dv, b * s_vgb + h * s_vgh + n * s_vgn, p, mask)
        _store_pairs(dqkv, src, p, mask, ge, go)


def _shapes(qkv, wq, rope):
    B, N, D3 = qkv.shape
    D, DH = D3 // 3, wq.shape[0]
    if D3 != 3 * D or D % DH or DH % 2:
        raise ValueError(f"qk_norm_rope: qkv {tuple(qkv.shape)} does not split into 3 x heads x {DH}")
    if rope is None:
        return B, N, D, DH, 0, 0, qkv
    rope = rope.contiguous()
    return B, N, D, DH, (rope.stride(0) if rope.dim() == 3 else 0), rope.stride(-2), rope


@triton_op("sprintc::qk_norm_rope", mutates_args={})
def qk_norm_rope(qkv: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, rope: Optional[torch.Tensor],
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv = qkv.contiguous()
    B, N, D, DH, s_rb, s_rn, table = _shapes(qkv, wq, rope)
    H, R = D // DH, B * N * (D // DH)
    q, k, v = (qkv.new_empty(B, H, N, DH) for _ in range(3))
    grid = (triton.cdiv(R, BLOCK_ROWS), 3)
    wrap_triton(_fwd_kernel)[grid](qkv, wq, wk, table, q, k, v, R, N, H, qkv.stride(0), qkv.stride(1), s_rb, s_rn,
                                   eps, D=D, DH=DH, BLOCK_P=triton.next_power_of_2(DH // 2), BLOCK_R=BLOCK_ROWS,
                                   HAS_ROPE=rope is not None)
    return q, k, v


@triton_op("sprintc::qk_norm_rope_backward", mutates_args={})
def qk_norm_rope_backward(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, qkv: torch.Tensor,
                          wq: torch.Tensor, wk: torch.Tensor, rope: Optional[torch.Tensor],
                          eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv = qkv.contiguous()
    dq, dk, dv = (g if g.stride(-1) == 1 else g.contiguous() for g in (dq, dk, dv))
    B, N, D, DH, s_rb, s_rn, table = _shapes(qkv, wq, rope)
    H, R = D // DH, B * N * (D // DH)
    blocks = triton.cdiv(R, BLOCK_ROWS)
    dqkv = torch.empty_like(qkv)
    dwq_part, dwk_part = (qkv.new_empty(blocks, DH, dtype=torch.float32) for _ in range(2))
    strides = [s for g in (dq, dk, dv) for s in (g.stride(0), g.stride(1), g.stride(2))]
    wrap_triton(_bwd_kernel)[(blocks, 3)](dq, dk, dv, qkv, wq, wk, table, dqkv, dwq_part, dwk_part, R, N, H,
                                          qkv.stride(0), qkv.stride(1), s_rb, s_rn, eps, *strides, D=D, DH=DH,
                                          BLOCK_P=triton.next_power_of_2(DH // 2), BLOCK_R=BLOCK_ROWS,
                                          HAS_ROPE=rope is not None)
    return dqkv, dwq_part.sum(0).to(wq.dtype), dwk_part.sum(0).to(wk.dtype)


def _setup_context(ctx, inputs, output):
    qkv, wq, wk, rope, eps = inputs
    ctx.save_for_backward(qkv, wq, wk, rope)
    ctx.eps = eps


def _backward(ctx, dq, dk, dv):
    qkv, wq, wk, rope = ctx.saved_tensors
    dqkv, dwq, dwk = qk_norm_rope_backward(dq, dk, dv, qkv, wq, wk, rope, ctx.eps)
    return dqkv, dwq, dwk, None, None


qk_norm_rope.register_autograd(_backward, setup_context=_setup_context)


def use_kernels(model: torch.nn.Module) -> int:
    """Point every sprintc Attention with RMS q/k norms at qk_norm_rope (used on CUDA tensors only); the count."""
    from sprintc.model import Attention, RMSNorm

    found = [m for m in model.modules() if isinstance(m, Attention) and isinstance(m.q_norm, RMSNorm)]
    for m in found:
        m.fused_qk = True
    return len(found)
