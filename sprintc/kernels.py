"""sprintc's hand-written Triton kernels for the attention (target.kernels, CUDA only).

`qk_norm_rope(qkv, wq, wk, rope, eps)` reads the qkv projection's output (B, N, 3*D) and returns the q, k, v
that scaled_dot_product_attention takes, (B, H, N, Dh) views of token-major memory: q and k RMS-normalised
per head (weight in float32, rounded to the input dtype as the model does) and rotated by RoPE, v copied.
The backward writes the whole dqkv and the norm weights' gradients. Both kernels work on tiles of whole tokens
(tokens x heads x head width) with q, k and v in separate programs (v is copied); every load of a tile is issued
before its reductions and RoPE's cos / sin are loaded once per token. The forward reads a head of 72 as 64 + 8
columns; the backward pads it to 128 (each measured the faster there, session J) and is persistent (a few programs
per SM, the next tiles' loads in flight through shared memory), summing the weights' gradients in registers.

`short_attention(q, k, v)` is scaled_dot_product_attention for sequences of at most 64 tokens (the routed blocks'
kept tokens at 75% drop), forward and backward, one program per (batch, head) holding the whole sequence; its output
is token-major, so the projection's reshape is a view. `qkv_attention(qkv, wq, wk, rope, eps)` is the two in a row as
the routed blocks run them: the q/k kernel for q and k only, then the attention reading v where qkv holds it; its
backward writes dv into the qkv projection's gradient, so neither v nor dv is copied.

The inductor target uses them in training and sampling steps on CUDA, where they were measured faster than
Inductor's code for the expression and than cuDNN's attention at 64 tokens (docs/PERFORMANCE.md, sessions J and L).

Registered with `torch.library.triton_op`: torch.compile traces into them (no graph break) and CUDA graphs
capture them. Importing this module imports triton; sprintc does it only when a CUDA lowering asks for it.
"""
from __future__ import annotations

import itertools
import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from sprintc.optim import ADAMW_BLOCK, _aligned


@triton.jit
def _rotate(y, T: tl.constexpr, BLOCK_H: tl.constexpr, W: tl.constexpr):
    """(y0, y1, y2, y3, ...) -> (-y1, y0, -y3, y2, ...) along each head: RoPE's interleaved pairs."""
    even, odd = tl.split(tl.reshape(y, [T, BLOCK_H, W // 2, 2]))
    return tl.reshape(tl.join(-odd, even), [T, BLOCK_H, W])


@triton.jit
def _pick(which, wq, wk, q, k, v, WITH_V: tl.constexpr):
    """The norm weight and the tensor of program row `which` (0 q, 1 k, 2 v; v has no weight: wq stands in). Without
    WITH_V the kernel runs for q and k only and never names v (so Inductor does not count it as written)."""
    w, t = wq, q
    if which == 1:
        w, t = wk, k
    if WITH_V:
        if which == 2:
            t = v
    return w, t


@triton.jit
def _rows(tile, n_tok, N: tl.constexpr, H: tl.constexpr, T: tl.constexpr, BLOCK_H: tl.constexpr):
    """A tile of T tokens x heads: token, head, batch and position indices, and which rows exist."""
    tok = tile * T + tl.arange(0, T)[:, None, None]
    h = tl.arange(0, BLOCK_H)[None, :, None]
    return tok, h, tok // N, tok % N, (tok < n_tok) & (h < H)


@triton.jit
def _cols(START: tl.constexpr, W: tl.constexpr, DH: tl.constexpr):
    """Columns START..START+W of a head and which of them exist (those up to its width DH)."""
    d = START + tl.arange(0, W)[None, None, :]
    return d, d < DH


@triton.jit
def _cos_sin(rope, b, n, tok, n_tok, s_rb, s_rn, d, dmask, DH: tl.constexpr, ROUND: tl.constexpr):
    """RoPE's cos / sin of the tile's tokens at columns d (rounded as ROUND), once per token for all heads."""
    row = rope + b * s_rb + n * s_rn + d
    m = (tok < n_tok) & dmask
    cos = tl.load(row, mask=m, other=0.0).to(ROUND).to(tl.float32)
    return cos, tl.load(row + DH, mask=m, other=0.0).to(ROUND).to(tl.float32)


@triton.jit
def _norm_rope(x, rstd, w, rope, b, n, tok, n_tok, s_rb, s_rn, d, dmask, DH: tl.constexpr, T: tl.constexpr,
               BLOCK_H: tl.constexpr, W: tl.constexpr, HAS_ROPE: tl.constexpr, dt: tl.constexpr):
    y = (x * rstd * tl.load(w + d, mask=dmask, other=0.0).to(tl.float32)).to(dt).to(tl.float32)  # rounded, as in the model
    if HAS_ROPE:
        cos, sin = _cos_sin(rope, b, n, tok, n_tok, s_rb, s_rn, d, dmask, DH, dt)
        y = y * cos + _rotate(y, T, BLOCK_H, W) * sin
    return y


@triton.jit
def _fwd_kernel(qkv, wq, wk, rope, q_out, k_out, v_out, n_tok, s_rb, s_rn,
                EPS: tl.constexpr, N: tl.constexpr, H: tl.constexpr, DH: tl.constexpr, T: tl.constexpr,
                BLOCK_H: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, HAS_ROPE: tl.constexpr,
                WITH_V: tl.constexpr):
    # program axis 1 picks q, k or v (v is copied, WITH_V): one branch per program
    which = tl.program_id(1)
    w, out = _pick(which, wq, wk, q_out, k_out, v_out, WITH_V)
    dt = q_out.dtype.element_ty
    tok, h, b, n, rows = _rows(tl.program_id(0), n_tok, N, H, T, BLOCK_H)
    src = qkv + tok * (3 * H * DH) + which * (H * DH) + h * DH
    dst = out + tok * (H * DH) + h * DH  # token-major (B, N, H, Dh) memory
    da, ma = _cols(0, DA, DH)
    xa = tl.load(src + da, mask=rows & ma, other=0.0).to(tl.float32)
    ss = tl.sum(xa * xa, 2)
    if DB > 0:
        db, mb = _cols(DA, DB, DH)
        xb = tl.load(src + db, mask=rows & mb, other=0.0).to(tl.float32)
        ss += tl.sum(xb * xb, 2)
    rstd = tl.rsqrt(ss[:, :, None] / DH + EPS)
    ya = xa
    if which < 2:
        ya = _norm_rope(xa, rstd, w, rope, b, n, tok, n_tok, s_rb, s_rn, da, ma, DH, T, BLOCK_H, DA, HAS_ROPE, dt)
    tl.store(dst + da, ya.to(dt), mask=rows & ma)
    if DB > 0:
        yb = xb
        if which < 2:
            yb = _norm_rope(xb, rstd, w, rope, b, n, tok, n_tok, s_rb, s_rn, db, mb, DH, T, BLOCK_H, DB, HAS_ROPE, dt)
        tl.store(dst + db, yb.to(dt), mask=rows & mb)


@triton.jit
def _bwd_kernel(dq, dk, dv, qkv, wq, wk, rope, dqkv, dw_part, n_tok, n_tiles, s_rb, s_rn,
                S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
                EPS: tl.constexpr, N: tl.constexpr, H: tl.constexpr, DH: tl.constexpr, T: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, HAS_ROPE: tl.constexpr, WITH_V: tl.constexpr,
                STAGES: tl.constexpr):
    # persistent over tiles of tokens; program axis 1 picks q, k or v (WITH_V: v's gradient is copied: x is read as 0
    # and the result replaced, the same code for all three). dq, dk and dv share the (constant) strides S0-S2
    which = tl.program_id(1)
    w, g_in = _pick(which, wq, wk, dq, dk, dv, WITH_V)
    dt = dqkv.dtype.element_ty
    cols = tl.arange(0, BLOCK_D)
    w = tl.load(w + cols, mask=cols < DH, other=0.0).to(tl.float32)[None, None, :]
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for tile in tl.range(tl.program_id(0), n_tiles, tl.num_programs(0), num_stages=STAGES):
        tok, h, b, n, rows = _rows(tile, n_tok, N, H, T, BLOCK_H)
        d, dmask = _cols(0, BLOCK_D, DH)  # a head's whole width, padded to a power of two
        mask = rows & dmask
        if HAS_ROPE:  # loaded before g and x: 96 registers instead of 128 (ptxas, sm_90)
            cos, sin = _cos_sin(rope, b, n, tok, n_tok, s_rb, s_rn, d, dmask, DH, dt)
        at = tok * (3 * H * DH) + which * (H * DH) + h * DH + d
        g = tl.load(g_in + b * S0 + h * S1 + n * S2 + d, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(qkv + at, mask=mask & (which < 2), other=0.0).to(tl.float32)
        gy = g
        if HAS_ROPE:  # the rotation's transpose: dy = g cos - rotate(g sin)
            gy = g * cos - _rotate(g * sin, T, BLOCK_H, BLOCK_D)
        rstd = tl.rsqrt(tl.sum(x * x, 2)[:, :, None] / DH + EPS)
        acc += tl.sum(gy * x * rstd, 0)
        u = gy * w
        dx = rstd * u - x * (rstd * rstd * rstd) * (tl.sum(u * x, 2)[:, :, None] / DH)
        tl.store(dqkv + at, tl.where(which == 2, g, dx).to(dt), mask=mask)
    tl.store(dw_part + (tl.program_id(0) * 2 + which) * BLOCK_D + tl.arange(0, BLOCK_D), tl.sum(acc, 0), mask=which < 2)


# default tiles, the fastest of scripts/gpu_qk_kernels.py on an H100 and an H200 (session J, calls 7 and 9; the
# backward's 4 programs per SM and 3 stages on an H100, session Y): forward (tokens, warps), backward (tokens, warps,
# programs per SM, tiles whose loads are in flight: Triton's pipeliner stages, through shared memory)
FWD_TILES, BWD_TILES = (4, 4), (1, 4, 4, 3)


def _ints_from_env(name):
    """The environment variable `name` as (its text, its comma-separated integers: [] where one is not an integer),
    or None where it is unset. Each such switch acts when a graph is traced, so its name is also in
    targets/inductor.py's KERNEL_SWITCHES (Inductor's cache key)."""
    env = os.environ.get(name)
    if not env:
        return None
    try:
        return env, [int(s) for s in env.split(",")]
    except ValueError:
        return env, []


def tiles_from_env():
    """SPRINTC_QK_BLOCKS='fwd_tokens,fwd_warps,bwd_tokens,bwd_warps,bwd_per_sm[,bwd_stages]' (a developer's switch for
    tuning on a GPU; stages 1 where left out) as (forward, backward) tiles, or None where it is unset; ValueError naming
    it where it is malformed."""
    found = _ints_from_env("SPRINTC_QK_BLOCKS")
    if found is None:
        return None
    env, v = found
    if len(v) not in (5, 6) or min(v) < 1:
        raise ValueError(f"SPRINTC_QK_BLOCKS={env!r}: expected five or six positive integers, "
                         "fwd_tokens,fwd_warps,bwd_tokens,bwd_warps,bwd_per_sm[,bwd_stages] (e.g. 4,4,1,4,5,1)")
    return (v[0], v[1]), (v[2], v[3], v[4], v[5] if len(v) == 6 else 1)


def _tiles(name):
    """FWD_TILES or BWD_TILES, unless SPRINTC_QK_BLOCKS overrides them (read when the op is traced)."""
    fwd, bwd = tiles_from_env() or (FWD_TILES, BWD_TILES)
    return fwd if name == "fwd" else bwd


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
    """A (B, H, N, Dh) tensor whose memory is (B, N, H, Dh), the layout v already has as a view of qkv.

    Made by torch.empty and a transpose, not by torch.empty_strided: torch 2.11's AOT graph CSE merges identical
    empty_strided calls of one graph (q, k, v, o of a region) into one buffer, which Inductor then cannot reinplace
    and copies once per kernel that writes it (session W: 0.95 ms per routed step at batch 128). aten.empty is
    never merged."""
    return torch.empty((B, N, H, DH), dtype=like.dtype, device=like.device).transpose(1, 2)


def _split(DH):
    """A head's columns as a power of two plus a (padded) rest: 72 -> 64 + 8, 128 -> 128 + 0."""
    da = 1 << (DH.bit_length() - 1)
    return da, (triton.next_power_of_2(DH - da) if DH > da else 0)


def _qk_forward(qkv, wq, wk, rope, eps, with_v):
    """q, k (and with_v a copy of v) of the contiguous qkv, token-major."""
    B, N, H, DH, s_rb, s_rn, table = _shapes(qkv, wq, rope)
    q, k = (_token_major(qkv, B, N, H, DH) for _ in range(2))
    v = _token_major(qkv, B, N, H, DH) if with_v else qkv  # without v the kernel never names its argument
    tokens, warps = _tiles("fwd")
    da, db = _split(DH)
    wrap_triton(_fwd_kernel)[(triton.cdiv(B * N, tokens), 3 if with_v else 2)](
        qkv, wq, wk, table, q, k, v, B * N, s_rb, s_rn, EPS=eps, N=N, H=H, DH=DH, T=tokens,
        BLOCK_H=triton.next_power_of_2(H), DA=da, DB=db, HAS_ROPE=rope is not None, WITH_V=with_v, num_warps=warps)
    return (q, k, v) if with_v else (q, k)


@triton_op("sprintc::qk_norm_rope", mutates_args={})
def qk_norm_rope(qkv: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, rope: Optional[torch.Tensor],
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # v is copied (a custom op's output may not be a view of its input), in the same kernel
    return _qk_forward(qkv.contiguous(), wq, wk, rope, eps, with_v=True)


def _programs(device, tiles, per_sm):
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2
    return max(1, min(tiles, sms * per_sm))


def _qk_backward(dq, dk, dv, qkv, dqkv, wq, wk, rope, eps):
    """Writes the q and k columns of dqkv (and, given dv, its v columns) from the gradients of the contiguous qkv's
    q, k (and v); returns the norm weights' gradients stacked, (2, Dh)."""
    B, N, H, DH, s_rb, s_rn, table = _shapes(qkv, wq, rope)
    # the kernel reads dq, dk and dv with one set of strides, compile-time constants (so its loads are vectorised):
    # dq's own if its rows are contiguous (attention's backward gives q's layout), else token-major
    like = dq if dq.stride(-1) == 1 else _token_major(dq, B, N, H, DH)
    grads = [g if g.stride() == like.stride() else torch.empty_like(like).copy_(g) for g in (dq, dk, dv) if g is not None]
    with_v = dv is not None
    if not with_v:
        grads.append(grads[0])  # not named by the kernel without v
    tokens, warps, per_sm, stages = _tiles("bwd")
    tiles = triton.cdiv(B * N, tokens)
    programs, block_d = _programs(qkv.device, tiles, per_sm), triton.next_power_of_2(DH)
    dw_part = torch.empty(programs, 2, block_d, dtype=torch.float32, device=qkv.device)
    # measured (session J): whole head widths padded to a power of two are faster here than the forward's 64 + 8
    wrap_triton(_bwd_kernel)[(programs, 3 if with_v else 2)](
        *grads, qkv, wq, wk, table, dqkv, dw_part, B * N, tiles, s_rb, s_rn,
        S0=like.stride(0), S1=like.stride(1), S2=like.stride(2), EPS=eps, N=N, H=H, DH=DH, T=tokens,
        BLOCK_H=triton.next_power_of_2(H), BLOCK_D=block_d, HAS_ROPE=rope is not None, WITH_V=with_v, STAGES=stages,
        num_warps=warps)
    # one sum for both weights, (2, DH): the autograd functions split it (a custom op's outputs may not be views of one
    # tensor, and two sums were two more kernels per backward)
    return dw_part[:, :, :DH].sum(0).to(wq.dtype)


@triton_op("sprintc::qk_norm_rope_backward", mutates_args={})
def qk_norm_rope_backward(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, qkv: torch.Tensor,
                          wq: torch.Tensor, wk: torch.Tensor, rope: Optional[torch.Tensor],
                          eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    qkv = qkv.contiguous()
    dqkv = torch.empty_like(qkv)
    return dqkv, _qk_backward(dq, dk, dv, qkv, dqkv, wq, wk, rope, eps)


def _setup_context(ctx, inputs, output):
    qkv, wq, wk, rope, eps = inputs
    ctx.save_for_backward(qkv, wq, wk, rope)
    ctx.eps = eps


def _backward(ctx, dq, dk, dv):
    qkv, wq, wk, rope = ctx.saved_tensors
    dqkv, dw = qk_norm_rope_backward(dq, dk, dv, qkv, wq, wk, rope, ctx.eps)
    return dqkv, dw[0], dw[1].to(wk.dtype), None, None


qk_norm_rope.register_autograd(_backward, setup_context=_setup_context)


# Attention over short sequences (the routed blocks' kept tokens: 64 at 75% drop): one program per (batch, head)
# holding the whole sequence, so S = q k^T and the softmax stay in registers, and the backward needs no saved
# log-sum-exp, no atomics and no second pass. The softmax scale is a constant (SCALE): Inductor, which launches these
# kernels in compiled steps, passes a Python float argument as float64, and the softmax computed in float64 until
# session V. A head's width is padded to a power of two (72 -> 128). Measured on an
# H100 (session L) and not kept: reading a head as 64 + 16 columns (no faster; NaN at 4 warps), and persistent
# programs with pipelined loads (faster alone, slower in the training step). SHORT_TOKENS is the longest sequence the
# inductor target sends here (longer ones go to scaled_dot_product_attention); ATTENTION_WARPS the forward's and the
# backward's warps.
SHORT_TOKENS, ATTENTION_WARPS = 64, (4, 4)
SHORT_MAX_TOKENS, SHORT_MAX_WIDTH = 64, 128  # what the kernel holds (at 128 tokens it failed on an H100, session L)


@triton.jit
def _head(N: tl.constexpr, H: tl.constexpr, DH: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, ROW: tl.constexpr):
    """Offsets and mask of this program's (batch, head) N x DH tile, padded to BN x BD, of memory whose tokens lie
    ROW elements apart (H * DH token-major; 3 * H * DH for a view of the qkv projection's output)."""
    b, h = tl.program_id(0) // H, tl.program_id(0) % H
    n = tl.arange(0, BN)[:, None]
    d = tl.arange(0, BD)[None, :]
    return b * (N * ROW) + n * ROW + h * DH + d, (n < N) & (d < DH)


@triton.jit
def _softmax_rows(q, k, SCALE: tl.constexpr, N: tl.constexpr, BN: tl.constexpr):
    """softmax(q k^T * SCALE) by rows in float32, padded keys left out."""
    s = tl.dot(q, tl.trans(k)).to(tl.float32) * (SCALE * 1.4426950408889634)  # log2(e): exp2 below
    s = tl.where(tl.arange(0, BN)[None, :] < N, s, float("-inf"))
    p = tl.exp2(s - tl.max(s, 1)[:, None])
    return p / tl.sum(p, 1)[:, None]


@triton.jit
def _attention_fwd_kernel(q, k, v, o, SCALE: tl.constexpr, N: tl.constexpr, H: tl.constexpr, DH: tl.constexpr,
                          BN: tl.constexpr, BD: tl.constexpr, QR: tl.constexpr, KR: tl.constexpr, VR: tl.constexpr):
    # q, k and v rows QR, KR, VR apart; o token-major
    at, m = _head(N, H, DH, BN, BD, H * DH)
    qt = tl.load(q + _head(N, H, DH, BN, BD, QR)[0], mask=m, other=0.0)
    kt = tl.load(k + _head(N, H, DH, BN, BD, KR)[0], mask=m, other=0.0)
    vt = tl.load(v + _head(N, H, DH, BN, BD, VR)[0], mask=m, other=0.0)
    p = _softmax_rows(qt, kt, SCALE, N, BN)
    tl.store(o + at, tl.dot(p.to(vt.dtype), vt).to(o.dtype.element_ty), mask=m)


@triton.jit
def _attention_bwd_kernel(q, k, v, o, do, dq, dk, dv, SCALE: tl.constexpr, N: tl.constexpr, H: tl.constexpr,
                          DH: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, QR: tl.constexpr, KR: tl.constexpr,
                          VR: tl.constexpr, DV_AT: tl.constexpr, DVR: tl.constexpr):
    # q, k, v rows QR, KR, VR apart; dv written DV_AT elements into its tensor, rows DVR apart (the v columns of the
    # qkv projection's gradient: no copy of dv); o, do, dq and dk token-major
    at, m = _head(N, H, DH, BN, BD, H * DH)
    qt = tl.load(q + _head(N, H, DH, BN, BD, QR)[0], mask=m, other=0.0)
    kt = tl.load(k + _head(N, H, DH, BN, BD, KR)[0], mask=m, other=0.0)
    vt = tl.load(v + _head(N, H, DH, BN, BD, VR)[0], mask=m, other=0.0)
    dot = tl.load(do + at, mask=m, other=0.0)
    dt = qt.dtype
    p = _softmax_rows(qt, kt, SCALE, N, BN)  # recomputed, as flash attention does, from the whole rows
    delta = tl.sum(dot.to(tl.float32) * tl.load(o + at, mask=m, other=0.0).to(tl.float32), 1)
    tl.store(dv + DV_AT + _head(N, H, DH, BN, BD, DVR)[0], tl.dot(tl.trans(p.to(dt)), dot).to(dt), mask=m)
    ds = (p * (tl.dot(dot, tl.trans(vt)).to(tl.float32) - delta[:, None]) * SCALE).to(dt)
    tl.store(dq + at, tl.dot(ds, kt).to(dt), mask=m)
    tl.store(dk + at, tl.dot(tl.trans(ds), qt).to(dt), mask=m)


def _attention_shapes(q):
    """B, H, N, DH and the row and column blocks (tl.dot takes dimensions of at least 16)."""
    B, H, N, DH = q.shape
    if N > SHORT_MAX_TOKENS or DH > SHORT_MAX_WIDTH:
        raise ValueError(f"short_attention: (B, H, N, Dh) = {tuple(q.shape)}; it holds N <= {SHORT_MAX_TOKENS} and "
                         f"Dh <= {SHORT_MAX_WIDTH}")
    return B, H, N, DH, max(16, triton.next_power_of_2(N)), max(16, triton.next_power_of_2(DH))


def _as_token_major(t):
    B, H, N, DH = t.shape
    like = _token_major(t, B, N, H, DH)
    return t if t.stride() == like.stride() else like.copy_(t)


def _attention_input(t):
    """t (B, H, N, Dh) as the attention kernels read it, and how far apart its tokens lie: as it is where its memory is
    (B, N, ..., H, Dh)-ordered with rows of Dh contiguous (token-major, or a view of the qkv projection's output),
    else a token-major copy."""
    B, H, N, DH = t.shape
    row = t.stride(2)
    if t.stride(3) == 1 and t.stride(1) == DH and row >= H * DH and t.stride(0) == N * row:
        return t, row
    t = _as_token_major(t)
    return t, H * DH


def _attention_forward(q, k, v):
    B, H, N, DH, bn, bd = _attention_shapes(q)
    (q, qr), (k, kr), (v, vr) = (_attention_input(t) for t in (q, k, v))
    o = _token_major(q, B, N, H, DH)
    wrap_triton(_attention_fwd_kernel)[(B * H,)](q, k, v, o, SCALE=DH ** -0.5, N=N, H=H, DH=DH, BN=bn, BD=bd,
                                                 QR=qr, KR=kr, VR=vr, num_warps=ATTENTION_WARPS[0])
    return o


def _attention_backward_into(do, q, k, v, o, dv, dv_at, dv_row):
    """dq and dk (token-major); dv written into `dv` from element dv_at on, rows dv_row apart."""
    B, H, N, DH, bn, bd = _attention_shapes(q)
    (q, qr), (k, kr), (v, vr) = (_attention_input(t) for t in (q, k, v))
    o, do = _as_token_major(o), _as_token_major(do)
    dq, dk = (_token_major(q, B, N, H, DH) for _ in range(2))
    wrap_triton(_attention_bwd_kernel)[(B * H,)](q, k, v, o, do, dq, dk, dv, SCALE=DH ** -0.5, N=N, H=H, DH=DH,
                                                 BN=bn, BD=bd, QR=qr, KR=kr, VR=vr, DV_AT=dv_at, DVR=dv_row,
                                                 num_warps=ATTENTION_WARPS[1])
    return dq, dk


@triton_op("sprintc::short_attention", mutates_args={})
def short_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """scaled_dot_product_attention(q, k, v) (no mask, no dropout) for (B, H, N, Dh) inputs with N <= 64; the output
    in token-major memory, so that its transpose(1, 2) to (B, N, H*Dh) is a view. Views of a qkv projection's output
    are read where they lie."""
    return _attention_forward(q, k, v)


@triton_op("sprintc::short_attention_backward", mutates_args={})
def short_attention_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, N, DH = q.shape
    dv = _token_major(q, B, N, H, DH)
    dq, dk = _attention_backward_into(do, q, k, v, o, dv, 0, H * DH)
    return dq, dk, dv


def _attention_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, output)


def _attention_backward(ctx, do):
    return short_attention_backward(do, *ctx.saved_tensors)


short_attention.register_autograd(_attention_backward, setup_context=_attention_setup_context)


# The routed blocks' attention with q/k RMSNorm + RoPE: qk_norm_rope's kernel for q and k, then short_attention's
# reading v where the qkv projection left it; the backward writes dv into the qkv projection's gradient and the q/k
# kernel its q and k columns. Against qk_norm_rope then short_attention this skips copying v in the forward and dv in
# the backward (4 D of traffic per token, and D fewer saved). q and k are outputs so that the backward can read them.
def _v_view(qkv, q):
    """v of the contiguous qkv as a (B, H, N, Dh) view, shaped as q."""
    B, H, N, DH = q.shape
    return qkv.view(B, N, 3, H, DH)[:, :, 2].transpose(1, 2)


@triton_op("sprintc::qkv_attention", mutates_args={})
def qkv_attention(qkv: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, rope: Optional[torch.Tensor],
                  eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o, q, k): short_attention(q, k, v) of qk_norm_rope(qkv, wq, wk, rope, eps)'s q, k, v, without copying v."""
    qkv = qkv.contiguous()
    q, k = _qk_forward(qkv, wq, wk, rope, eps, with_v=False)
    return _attention_forward(q, k, _v_view(qkv, q)), q, k


@triton_op("sprintc::qkv_attention_backward", mutates_args={})
def qkv_attention_backward(do: torch.Tensor, qkv: torch.Tensor, q: torch.Tensor, k: torch.Tensor, o: torch.Tensor,
                           wq: torch.Tensor, wk: torch.Tensor, rope: Optional[torch.Tensor],
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    qkv = qkv.contiguous()
    dqkv = torch.empty_like(qkv)
    D = qkv.shape[-1] // 3
    dq, dk = _attention_backward_into(do, q, k, _v_view(qkv, q), o, dqkv, 2 * D, 3 * D)
    return dqkv, _qk_backward(dq, dk, None, qkv, dqkv, wq, wk, rope, eps)


def _qkv_setup_context(ctx, inputs, output):
    qkv, wq, wk, rope, eps = inputs
    ctx.save_for_backward(qkv, output[1], output[2], output[0], wq, wk, rope)
    ctx.eps = eps


def _qkv_backward(ctx, do, _dq, _dk):  # q and k are outputs for the backward's sake only: their gradients are unused
    qkv, q, k, o, wq, wk, rope = ctx.saved_tensors
    dqkv, dw = qkv_attention_backward(do, qkv, q, k, o, wq, wk, rope, ctx.eps)
    return dqkv, dw[0], dw[1].to(wk.dtype), None, None


qkv_attention.register_autograd(_qkv_backward, setup_context=_qkv_setup_context)


def attention_from_env():
    """SPRINTC_SHORT_ATTENTION='tokens,fwd_warps,bwd_warps' (a developer's switch for A/B runs on a GPU; tokens 0 sends
    every attention to SDPA) sets SHORT_TOKENS and ATTENTION_WARPS; ValueError naming it where it is malformed."""
    global SHORT_TOKENS, ATTENTION_WARPS
    found = _ints_from_env("SPRINTC_SHORT_ATTENTION")
    if found is None:
        return
    env, v = found
    if len(v) != 3 or not 0 <= v[0] <= SHORT_MAX_TOKENS or min(v[1:]) < 1:
        raise ValueError(f"SPRINTC_SHORT_ATTENTION={env!r}: expected tokens (0-{SHORT_MAX_TOKENS}), forward warps, "
                         "backward warps (e.g. 64,4,4)")
    SHORT_TOKENS, ATTENTION_WARPS = v[0], (v[1], v[2])


def gelu_epilogue_from_env() -> tuple[bool, bool]:
    """SPRINTC_GELU_EPILOGUE (a developer's switch for A/B runs on a GPU): unset or '1' puts the MLP's bias and GELU
    in cuBLASLt's epilogues in sampling and in training (sprintc/cublaslt.py), 'sample' in sampling only, '0' nowhere
    (Inductor's own passes); (in sampling, in training). ValueError naming it otherwise."""
    env = os.environ.get("SPRINTC_GELU_EPILOGUE", "1")
    if env not in ("0", "1", "sample"):
        raise ValueError(f"SPRINTC_GELU_EPILOGUE={env!r}: expected 0, 1 or sample")
    return env != "0", env == "1"


def use_kernels(model: torch.nn.Module) -> int:
    """Point every sprintc Attention at short_attention for sequences of up to SHORT_TOKENS tokens, and those with RMS
    q/k norms at qk_norm_rope (both used on CUDA tensors only), and every GELU MLP at cuBLASLt's GELU epilogues
    (sampling and training, sprintc/cublaslt.py); the number of attentions."""
    from sprintc.model import Attention, Mlp, RMSNorm

    found = [m for m in model.modules() if isinstance(m, Attention)]
    for m in found:
        m.fused_qk, m.short_tokens = isinstance(m.q_norm, RMSNorm), SHORT_TOKENS
    sample, train = gelu_epilogue_from_env()
    for m in model.modules():
        if isinstance(m, Mlp):
            m.gelu_epilogue, m.gelu_train = sample and m.kind == "gelu_tanh", train and m.kind == "gelu_tanh"
    return len(found)


# ----------------------------------------------------------------------------------- AdamW over flat buffers
ADAMW_WARPS = 4  # warps per program of ADAMW_BLOCK elements
_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


class GradientTable:
    """Where each program of the AdamW and norm kernels finds its gradients: in the gradient tensors themselves, so
    no step gathers them into a flat buffer first (a read and a write of every gradient). Tensor i has `sizes[i]`
    elements and starts at `offsets[i]` of the flat buffers, a multiple of ADAMW_BLOCK: each program's block of the flat
    buffers lies in one tensor (its tail in the padding, which the kernels fill with zero gradients). `point(grads)`
    hands the kernels each block's gradient address: a small host-to-device copy and two index ops, which a CUDA graph
    captures and replays (the copy from pinned memory set aside for it, kept as long as the table)."""

    def __init__(self, sizes: list[int], offsets: list[int], device):
        if any(o % ADAMW_BLOCK for o in offsets):
            raise ValueError(f"GradientTable: offsets must be multiples of ADAMW_BLOCK ({ADAMW_BLOCK})")
        tensor, start, block = [], [], []
        for i, (n, o) in enumerate(zip(sizes, offsets)):
            starts = range(0, n, ADAMW_BLOCK)
            tensor += [i] * len(starts)
            start += starts
            block += [(o + s) // ADAMW_BLOCK for s in starts]
        self.chunks, self.dense, self.dtype = len(tensor), block == list(range(len(block))), None
        as_tensor = lambda x, dt: torch.tensor(x, dtype=dt, device=device)  # noqa: E731
        self.chunk_tensor, self.chunk_start = as_tensor(tensor, torch.int64), as_tensor(start, torch.int64)
        self.chunk_block = as_tensor(block, torch.int32)
        self.chunk_left = as_tensor([min(ADAMW_BLOCK, sizes[t] - s) for t, s in zip(tensor, start)], torch.int32)
        self.chunk_address = torch.zeros(self.chunks, dtype=torch.int64, device=device)
        self.address = torch.zeros(len(sizes), dtype=torch.int64, device=device)
        self.partial = torch.empty(self.chunks, dtype=torch.float32, device=device)
        self._spare, self._captured = None, []

    def point(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Take `grads` (of one dtype and the sizes given) as the gradients the next kernels read. Returns them, copied
        where they were not contiguous and 16-byte aligned (as the kernels assume): hold them until the kernels are
        launched."""
        grads = [g if g.is_contiguous() and g.data_ptr() % 16 == 0 else g.clone(memory_format=torch.contiguous_format)
                 for g in grads]
        self.dtype = _TL_DTYPES[grads[0].dtype]
        addresses = torch.tensor([g.data_ptr() for g in grads], dtype=torch.int64)
        cuda = self.address.is_cuda
        if cuda and torch.cuda.is_current_stream_capturing():
            if self._spare is None:
                raise RuntimeError("GradientTable: a CUDA graph capture needs an uncaptured step before it (which sets "
                                   "pinned memory aside for the capture)")
            host, self._spare = self._spare.copy_(addresses), None  # the graph copies it at each replay: kept
            self._captured.append(host)
        else:
            if cuda and self._spare is None:  # pinned memory for the next capture (not allocatable during one)
                self._spare = torch.empty_like(addresses).pin_memory()
            host = addresses.pin_memory() if cuda else addresses  # an asynchronous copy, no wait for the GPU
        self.address.copy_(host, non_blocking=True)
        torch.add(self.address[self.chunk_tensor], self.chunk_start, alpha=grads[0].element_size(),
                  out=self.chunk_address)
        return grads

    def args(self):
        return self.chunk_block, self.chunk_address, self.chunk_left


@triton.jit
def _load_grads(chunk_block, chunk_address, chunk_left, DTYPE: tl.constexpr, DENSE: tl.constexpr,
                BLOCK: tl.constexpr):
    """This program's gradients as float32 (zeros past the tensor's end) and its offsets in the flat buffers."""
    pid = tl.program_id(0)
    lanes = tl.arange(0, BLOCK)
    if DENSE:  # the blocks of every tensor, in order: program i has block i
        block = pid.to(tl.int64)
    else:
        block = tl.load(chunk_block + pid).to(tl.int64)
    g_ptr = tl.multiple_of(tl.load(chunk_address + pid).to(tl.pointer_type(DTYPE)), 16) + lanes  # aligned (point)
    left = tl.load(chunk_left + pid)
    if left == BLOCK:  # a whole block: unmasked, vectorised loads
        g = tl.load(g_ptr).to(tl.float32)
    else:
        g = tl.load(g_ptr, mask=lanes < left, other=0.0).to(tl.float32)
    return g, block * BLOCK + lanes


@triton.jit
def _grad_sq_sum_kernel(chunk_block, chunk_address, chunk_left, partial, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    # DENSE=True: the block's place in the flat buffers is not needed here, so its table entry is not loaded
    g, _ = _load_grads(chunk_block, chunk_address, chunk_left, DTYPE, True, BLOCK)
    tl.store(partial + tl.program_id(0), tl.sum(g * g))


def grad_norm(table: GradientTable) -> torch.Tensor:
    """The 2-norm (float32) of the gradients `table` points at."""
    _grad_sq_sum_kernel[(table.chunks,)](*table.args(), table.partial, DTYPE=table.dtype, BLOCK=ADAMW_BLOCK,
                                         num_warps=ADAMW_WARPS)
    return table.partial.sum().sqrt()


@triton.jit
def _adamw_update(p, m, v, g, lr, step, beta1, beta2, log2_beta1, log2_beta2, eps, weight_decay):
    """torch's AdamW on float32 values: decay, lerp the first moment, then the step over the bias-corrected second
    moment. The new (p, m, v)."""
    p = p * (1.0 - lr * weight_decay)
    m = m + (1.0 - beta1) * (g - m)
    v = v * beta2 + (1.0 - beta2) * g * g
    bias1 = 1.0 - tl.exp2(step * log2_beta1)
    bias2 = 1.0 - tl.exp2(step * log2_beta2)
    denom = tl.div_rn(tl.sqrt_rn(v), tl.sqrt_rn(bias2)) + eps
    return p - tl.div_rn(lr, bias1) * tl.div_rn(m, denom), m, v


@triton.jit
def _moment_noise(offs, step):
    """optim.moment_noise in uint32: 32 random bits per element of the flat buffers at this step."""
    x = offs.to(tl.uint32) * 0x9E3779B1 + step.to(tl.uint32) * 0x85EBCA77
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _round_bf16_stochastic(x, noise16):
    """optim.round_bf16_stochastic: float32 to bf16's bits (int16), rounded up in magnitude with probability (the
    dropped 16 bits) / 2**16."""
    return ((x.to(tl.int32, bitcast=True) + noise16.to(tl.int32)) >> 16).to(tl.int16)


@triton.jit
def _adamw_master_kernel(weights, low, exp_avg, exp_avg_sq, ema, chunk_block, chunk_address, chunk_left,
                         lr_ptr, step_ptr, scale_ptr, ema_w_ptr, beta1, beta2, log2_beta1, log2_beta2, eps,
                         weight_decay, HAS_SCALE: tl.constexpr, HAS_EMA: tl.constexpr, DTYPE: tl.constexpr,
                         DENSE: tl.constexpr, MOMENTS_BF16: tl.constexpr, BLOCK: tl.constexpr):
    # the flat buffers' blocks are whole (padded to BLOCK): only the gradients' loads may be masked
    g, offs = _load_grads(chunk_block, chunk_address, chunk_left, DTYPE, DENSE, BLOCK)
    lr = tl.load(lr_ptr).to(tl.float32)
    step = tl.load(step_ptr).to(tl.float32)
    if HAS_SCALE:
        g = tl.div_rn(g, tl.load(scale_ptr).to(tl.float32))
    # the float32 master's bits: the bf16 weight's bits (int16, sign-extended) shifted up, plus the low part
    p = ((tl.load(weights + offs).to(tl.int32) << 16) + tl.load(low + offs).to(tl.int32)).to(tl.float32, bitcast=True)
    if MOMENTS_BF16:  # (their bits as int16, as the weights')
        m = (tl.load(exp_avg + offs).to(tl.int32) << 16).to(tl.float32, bitcast=True)
        v = (tl.load(exp_avg_sq + offs).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    else:
        m, v = tl.load(exp_avg + offs), tl.load(exp_avg_sq + offs)
    p, m, v = _adamw_update(p, m, v, g, lr, step, beta1, beta2, log2_beta1, log2_beta2, eps, weight_decay)
    # split the new master as optim.split_master does: bf16 rounded to nearest, ties to even (on the bits, so the
    # interpreter rounds as the GPU does), and the rest, clamped to int16 (a tie rounded down moves the master 1 ulp)
    bits = p.to(tl.int32, bitcast=True)
    hi = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    lo = tl.minimum(bits - (hi << 16), 32767)
    tl.store(weights + offs, hi.to(tl.int16))
    tl.store(low + offs, lo.to(tl.int16))
    if MOMENTS_BF16:
        noise = _moment_noise(offs, step)
        tl.store(exp_avg + offs, _round_bf16_stochastic(m, noise & 0xFFFF))
        tl.store(exp_avg_sq + offs, _round_bf16_stochastic(v, noise >> 16))
    else:
        tl.store(exp_avg + offs, m)
        tl.store(exp_avg_sq + offs, v)
    if HAS_EMA:  # the EMA of the new master as stored, as torch.lerp computes it
        p = ((hi << 16) + lo).to(tl.float32, bitcast=True)
        w = tl.load(ema_w_ptr).to(tl.float32)
        e = tl.load(ema + offs)
        e = tl.where(w < 0.5, e + w * (p - e), p - (p - e) * (1.0 - w))
        tl.store(ema + offs, e)


def adamw_master_(weights, low, grads: GradientTable, exp_avg, exp_avg_sq, lr, step, scale, beta1, beta2, eps,
                  weight_decay, ema=None, ema_weight=None):
    """One AdamW step over float32 masters held as bf16 `weights` and their int16 `low` parts (optim.split_master)
    and float32 moments (or bf16 ones, stored rounded stochastically as optim._update stores them), flat buffers laid
    out as GradientTable says (the padding zeros); low-precision gradients in (where `grads` points); and, given
    `ema`, ema.lerp_(new master, ema_weight). lr, step, scale (the clip divisor, or None) and ema_weight are 0-d device
    tensors, read by the kernel (no host sync)."""
    if weights.dtype != torch.bfloat16 or low.dtype != torch.int16:
        raise TypeError(f"adamw_master_: bf16 weights and int16 low parts, not {weights.dtype} and {low.dtype}")
    bf16_moments = exp_avg.dtype == torch.bfloat16
    if {exp_avg.dtype, exp_avg_sq.dtype} not in ({torch.float32}, {torch.bfloat16}):
        raise TypeError(f"adamw_master_: float32 or bf16 moments, both alike, not {exp_avg.dtype} and {exp_avg_sq.dtype}")
    if bf16_moments:
        exp_avg, exp_avg_sq = exp_avg.view(torch.int16), exp_avg_sq.view(torch.int16)
    _adamw_master_kernel[(grads.chunks,)](
        weights.view(torch.int16), low, exp_avg, exp_avg_sq, ema if ema is not None else exp_avg, *grads.args(), lr,
        step, scale if scale is not None else step, ema_weight if ema is not None else step,
        beta1, beta2, *(math.log2(b) if b > 0 else -math.inf for b in (beta1, beta2)), eps, weight_decay,
        HAS_SCALE=scale is not None, HAS_EMA=ema is not None, DTYPE=grads.dtype, DENSE=grads.dense,
        MOMENTS_BF16=bf16_moments, BLOCK=ADAMW_BLOCK, num_warps=ADAMW_WARPS)


class Float32Params:
    """Where each program of adamw_float32_ finds its block of float32 parameters, their moments, their step count
    and their gradients: addresses per block of ADAMW_BLOCK elements, the parameters' and moments' taken once (they
    stay in place), the gradients' through `grads` (a GradientTable, pointed each step). For MasterAdamW's float32
    parameters (norm weights, embeddings), each with its own step count as torch's AdamW keeps it."""

    def __init__(self, params, exp_avgs, exp_avg_sqs, steps, device):
        sizes = [p.numel() for p in params]
        offsets = list(itertools.accumulate((_aligned(n) for n in sizes[:-1]), initial=0))  # dense: program i, block i
        self.grads = GradientTable(sizes, offsets, device)

        def per_block(tensors, element_bytes):
            return torch.tensor([t.data_ptr() + start * element_bytes for t, n in zip(tensors, sizes)
                                 for start in range(0, n, ADAMW_BLOCK)], dtype=torch.int64, device=device)

        self.values, self.exp_avg, self.exp_avg_sq = (per_block(t, 4) for t in (params, exp_avgs, exp_avg_sqs))
        self.steps = per_block(steps, 0)  # each block reads its parameter's one count


@triton.jit
def _adamw_float32_kernel(values, exp_avg, exp_avg_sq, steps, chunk_block, chunk_address, chunk_left, lr_ptr,
                          scale_ptr, beta1, beta2, log2_beta1, log2_beta2, eps, weight_decay,
                          HAS_SCALE: tl.constexpr, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    # (no argument may be named `params`: Triton's argument binder on the GPU has a variable of that name)
    pid = tl.program_id(0)
    g, _ = _load_grads(chunk_block, chunk_address, chunk_left, DTYPE, True, BLOCK)
    lanes = tl.arange(0, BLOCK)
    mask = lanes < tl.load(chunk_left + pid)  # (whole blocks unmasked, as the master kernel has them, took as long)
    p_ptr = tl.multiple_of(tl.load(values + pid).to(tl.pointer_type(tl.float32)), 16) + lanes
    m_ptr = tl.multiple_of(tl.load(exp_avg + pid).to(tl.pointer_type(tl.float32)), 16) + lanes
    v_ptr = tl.multiple_of(tl.load(exp_avg_sq + pid).to(tl.pointer_type(tl.float32)), 16) + lanes
    step = tl.load(tl.load(steps + pid).to(tl.pointer_type(tl.float32)))
    lr = tl.load(lr_ptr).to(tl.float32)
    if HAS_SCALE:
        g = tl.div_rn(g, tl.load(scale_ptr).to(tl.float32))
    p, m, v = _adamw_update(tl.load(p_ptr, mask=mask), tl.load(m_ptr, mask=mask), tl.load(v_ptr, mask=mask), g, lr,
                            step, beta1, beta2, log2_beta1, log2_beta2, eps, weight_decay)
    tl.store(p_ptr, p, mask=mask)
    tl.store(m_ptr, m, mask=mask)
    tl.store(v_ptr, v, mask=mask)


def adamw_float32_(table: Float32Params, lr, scale, beta1, beta2, eps, weight_decay):
    """One AdamW step of the float32 parameters `table` holds, reading the gradients table.grads points at: one
    kernel, where torch's fused AdamW (a 65,536-element chunk per program: 0.08 ms for XL's label embedding), its clip
    division and its norm took 0.12 ms per step (docs/PERFORMANCE.md, session AF). Each parameter's step count is
    read as it is (add 1 first, as torch does); lr and scale (or None) are 0-d device tensors."""
    g = table.grads
    if g.dtype != tl.float32:
        raise TypeError("adamw_float32_: float32 gradients")
    _adamw_float32_kernel[(g.chunks,)](
        table.values, table.exp_avg, table.exp_avg_sq, table.steps, *g.args(), lr,
        scale if scale is not None else lr, beta1, beta2,
        *(math.log2(b) if b > 0 else -math.inf for b in (beta1, beta2)), eps, weight_decay,
        HAS_SCALE=scale is not None, DTYPE=g.dtype, BLOCK=ADAMW_BLOCK, num_warps=ADAMW_WARPS)
