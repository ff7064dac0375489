"""A hand-written Triton kernel pair for the attention's q/k RMSNorm + RoPE (target.kernels, CUDA only).

`qk_norm_rope(qkv, wq, wk, rope, eps)` reads the qkv projection's output (B, N, 3*D) and returns the q, k, v
that scaled_dot_product_attention takes, (B, H, N, Dh) views of token-major memory: q and k RMS-normalised
per head (weight in float32, rounded to the input dtype as the model does) and rotated by RoPE, v copied.
The backward writes the whole dqkv and the norm weights' gradients. Both kernels work on rows of one head
(Dh values), many rows per program, so every load of a tile is issued before its reductions; the backward
is persistent (a few programs per SM), summing the weights' gradients in registers.

The inductor target uses them where no gradient is taken (sampling), where they were measured faster; in the
training step they were not (docs/PERFORMANCE.md, session I). SPRINTC_QK_KERNELS=always, a developer's switch,
puts them in training steps too, to measure them again.

Registered with `torch.library.triton_op`: torch.compile traces into it (no graph break) and CUDA graphs
capture it. Importing this module imports triton; sprintc does it only when a CUDA lowering asks for it.
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
    """(y0, y1, y2, y3, ...) -> (-y1, y0, -y3, y2, ...) along each row: RoPE's interleaved pairs."""
    even, odd = tl.split(tl.reshape(y, [R, BLOCK_D // 2, 2]))
    return tl.reshape(tl.join(-odd, even), [R, BLOCK_D])


@triton.jit
def _tile(tile, n_rows, rope, s_rb, s_rn, N: tl.constexpr, H: tl.constexpr, DH: tl.constexpr,
          BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, HAS_ROPE: tl.constexpr, ROUND: tl.constexpr):
    """Indices of a tile of rows (token, q|k|v, head) and the RoPE cos / sin of their tokens (rounded as ROUND)."""
    r = tile * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    tok, j = r // (3 * H), r % (3 * H)
    which, h = j // H, j % H
    mask = (r < n_rows) & (d < DH)
    b, n = tok // N, tok % N
    cos = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    sin = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    if HAS_ROPE:
        row = rope + b * s_rb + n * s_rn + d
        cos = tl.load(row, mask=mask, other=0.0).to(ROUND).to(tl.float32)
        sin = tl.load(row + DH, mask=mask, other=0.0).to(ROUND).to(tl.float32)
    return r, d, tok, which, h, b, n, mask, cos, sin


@triton.jit
def _fwd_kernel(qkv, wq, wk, rope, q_out, k_out, v_out, n_rows, s_rb, s_rn,
                EPS: tl.constexpr, N: tl.constexpr, H: tl.constexpr, DH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                HAS_ROPE: tl.constexpr):
    dt = q_out.dtype.element_ty
    r, d, tok, which, h, b, n, mask, cos, sin = _tile(tl.program_id(0), n_rows, rope, s_rb, s_rn, N, H, DH,
                                                     BLOCK_R, BLOCK_D, HAS_ROPE, dt)
    x = tl.load(qkv + r * DH + d, mask=mask, other=0.0).to(tl.float32)  # qkv rows are contiguous
    w = tl.where(which == 0, tl.load(wq + d, mask=d < DH, other=0.0), tl.load(wk + d, mask=d < DH, other=0.0))
    rstd = tl.rsqrt(tl.sum(x * x, 1)[:, None] / DH + EPS)
    y = (x * rstd * w.to(tl.float32)).to(dt).to(tl.float32)  # the norm's output is rounded, as in the model
    if HAS_ROPE:
        y = y * cos + _rotate(y, BLOCK_R, BLOCK_D) * sin
    y = tl.where(which == 2, x, y).to(dt)
    # token-major (B, N, H, Dh) memory for all three: measured faster in the sampling step than q and k head-major
    dst = tok * (H * DH) + h * DH + d
    tl.store(q_out + dst, y, mask=mask & (which == 0))
    tl.store(k_out + dst, y, mask=mask & (which == 1))
    tl.store(v_out + dst, y, mask=mask & (which == 2))


@triton.jit
def _bwd_kernel(dq, dk, dv, qkv, wq, wk, rope, dqkv, dw_part, n_rows, n_tiles, s_rb, s_rn,
                sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2,
                EPS: tl.constexpr, N: tl.constexpr, H: tl.constexpr, DH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                HAS_ROPE: tl.constexpr):
    dt = dqkv.dtype.element_ty
    dmask = tl.arange(0, BLOCK_D) < DH
    wq_ = tl.load(wq + tl.arange(0, BLOCK_D), mask=dmask, other=0.0).to(tl.float32)[None, :]
    wk_ = tl.load(wk + tl.arange(0, BLOCK_D), mask=dmask, other=0.0).to(tl.float32)[None, :]
    acc_q = tl.zeros([BLOCK_D], tl.float32)
    acc_k = tl.zeros([BLOCK_D], tl.float32)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        r, d, tok, which, h, b, n, mask, cos, sin = _tile(tile, n_rows, rope, s_rb, s_rn, N, H, DH,
                                                         BLOCK_R, BLOCK_D, HAS_ROPE, dt)
        # every load first: the incoming gradient of each row from dq, dk or dv (any strides), and x
        g = tl.load(dq + b * sq0 + h * sq1 + n * sq2 + d, mask=mask & (which == 0), other=0.0).to(tl.float32)
        g += tl.load(dk + b * sk0 + h * sk1 + n * sk2 + d, mask=mask & (which == 1), other=0.0).to(tl.float32)
        g += tl.load(dv + b * sv0 + h * sv1 + n * sv2 + d, mask=mask & (which == 2), other=0.0).to(tl.float32)
        x = tl.load(qkv + r * DH + d, mask=mask & (which < 2), other=0.0).to(tl.float32)
        gy = g
        if HAS_ROPE:  # the rotation's transpose: dy = g cos - rotate(g sin)
            gy = g * cos - _rotate(g * sin, BLOCK_R, BLOCK_D)
        rstd = tl.rsqrt(tl.sum(x * x, 1)[:, None] / DH + EPS)
        dw = gy * x * rstd
        acc_q += tl.sum(tl.where(which == 0, dw, 0.0), 0)
        acc_k += tl.sum(tl.where(which == 1, dw, 0.0), 0)
        u = gy * tl.where(which == 0, wq_, wk_)
        dx = rstd * u - x * (rstd * rstd * rstd) * (tl.sum(u * x, 1)[:, None] / DH)
        tl.store(dqkv + r * DH + d, tl.where(which == 2, g, dx).to(dt), mask=mask)
    part = dw_part + tl.program_id(0) * 2 * BLOCK_D + tl.arange(0, BLOCK_D)
    tl.store(part, acc_q)
    tl.store(part + BLOCK_D, acc_k)


def _blocks(name, rows, warps):
    """(rows per tile, warps) of a kernel; SPRINTC_QK_BLOCKS='fwd_rows,fwd_warps,bwd_rows,bwd_warps' overrides
    (a developer's switch for tuning on a GPU, read when the op is traced)."""
    env = os.environ.get("SPRINTC_QK_BLOCKS")
    if env:
        v = [int(s) for s in env.split(",")]
        return (v[0], v[1]) if name == "fwd" else (v[2], v[3])
    return rows, warps


def _shapes(qkv, wq, rope):
    B, N, D3 = qkv.shape
    DH = wq.shape[0]
    if D3 % 3 or (D3 // 3) % DH or (rope is not None and DH % 2):
        raise ValueError(f"qk_norm_rope: qkv {tuple(qkv.shape)} does not split into 3 x heads x {DH}"
                         + (" with an even head width for RoPE" if rope is not None else ""))
    if rope is None:
        return B, N, D3 // 3 // DH, DH, 0, 0, qkv
    rope = rope.contiguous()
    return B, N, D3 // 3 // DH, DH, (rope.stride(0) if rope.dim() == 3 else 0), rope.stride(-2), rope


def _token_major(like, B, N, H, DH):
    """A (B, H, N, Dh) tensor whose memory is (B, N, H, Dh), the layout v already has as a view of qkv."""
    return torch.empty_strided((B, H, N, DH), (N * H * DH, DH, H * DH, 1), dtype=like.dtype, device=like.device)


@triton_op("sprintc::qk_norm_rope", mutates_args={})
def qk_norm_rope(qkv: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, rope: Optional[torch.Tensor],
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv = qkv.contiguous()
    B, N, H, DH, s_rb, s_rn, table = _shapes(qkv, wq, rope)
    q, k, v = (_token_major(qkv, B, N, H, DH) for _ in range(3))
    rows, warps = _blocks("fwd", 32, 8)  # the fastest of gpu_qk_kernels.py's tiles (H100, session I)
    n_rows = B * N * 3 * H
    wrap_triton(_fwd_kernel)[(triton.cdiv(n_rows, rows),)](
        qkv, wq, wk, table, q, k, v, n_rows, s_rb, s_rn, EPS=eps, N=N, H=H, DH=DH, BLOCK_R=rows,
        BLOCK_D=triton.next_power_of_2(DH), HAS_ROPE=rope is not None, num_warps=warps)
    return q, k, v


def _programs(device, tiles):
    per_sm = 4
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    return max(1, min(tiles, sms * per_sm))


@triton_op("sprintc::qk_norm_rope_backward", mutates_args={})
def qk_norm_rope_backward(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, qkv: torch.Tensor,
                          wq: torch.Tensor, wk: torch.Tensor, rope: Optional[torch.Tensor],
                          eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    qkv = qkv.contiguous()
    B, N, H, DH, s_rb, s_rn, table = _shapes(qkv, wq, rope)
    dq, dk, dv = (g if g.stride(-1) == 1 else g.contiguous() for g in (dq, dk, dv))
    rows, warps = _blocks("bwd", 128, 8)
    n_rows = B * N * 3 * H
    tiles = triton.cdiv(n_rows, rows)
    programs, block_d = _programs(qkv.device, tiles), triton.next_power_of_2(DH)
    dqkv = torch.empty_like(qkv)
    dw_part = torch.empty(programs, 2, block_d, dtype=torch.float32, device=qkv.device)
    wrap_triton(_bwd_kernel)[(programs,)](
        dq, dk, dv, qkv, wq, wk, table, dqkv, dw_part, n_rows, tiles, s_rb, s_rn,
        dq.stride(0), dq.stride(1), dq.stride(2), dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2), EPS=eps, N=N, H=H, DH=DH, BLOCK_R=rows, BLOCK_D=block_d,
        HAS_ROPE=rope is not None, num_warps=warps)
    # two separate sums: a custom op's outputs may not be views of one tensor
    return dqkv, dw_part[:, 0, :DH].sum(0).to(wq.dtype), dw_part[:, 1, :DH].sum(0).to(wk.dtype)


def _setup_context(ctx, inputs, output):
    qkv, wq, wk, rope, eps = inputs
    ctx.save_for_backward(qkv, wq, wk, rope)
    ctx.eps = eps


def _backward(ctx, dq, dk, dv):
    qkv, wq, wk, rope = ctx.saved_tensors
    dqkv, dwq, dwk = qk_norm_rope_backward(dq, dk, dv, qkv, wq, wk, rope, ctx.eps)
    return dqkv, dwq, dwk, None, None


qk_norm_rope.register_autograd(_backward, setup_context=_setup_context)


WHERE = ("sampling", "always")  # steps without gradients only, or every step


def use_kernels(model: torch.nn.Module, where: str = "sampling") -> int:
    """Point every sprintc Attention with RMS q/k norms at qk_norm_rope, on CUDA tensors, in steps without gradients
    ("sampling") or in all of them ("always"); the count."""
    from sprintc.model import Attention, RMSNorm

    if where not in WHERE:
        raise ValueError(f"use_kernels: where is 'sampling' or 'always', not {where!r}")
    found = [m for m in model.modules() if isinstance(m, Attention) and isinstance(m.q_norm, RMSNorm)]
    for m in found:
        m.fused_qk = where
    return len(found)
