"""DiT / SiT models built from a spec. Parameter names follow the reference SPRINT SiT
(../shared/conformance/README.md), with the block stack stored as one list `blocks.i`."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sprintc.spec import ModelSpec


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def rotate_half(x):  # interleaved pairs: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x2, x1), -1).flatten(-2)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # weight applied in float32 before the cast back: a float32 weight times bf16 q/k would promote
        # them to float32 for RoPE and attention (same numbers in float32)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()).to(x.dtype)


def qk_norm(kind, dim):
    return {"none": nn.Identity, "rms": RMSNorm, "layer": lambda d: nn.LayerNorm(d, eps=1e-6)}[kind](dim)


class Attention(nn.Module):
    # set by the inductor target on CUDA (sprintc/kernels.py): q/k RMSNorm + RoPE as sprintc's kernel, and attention
    # over sequences of at most short_tokens tokens (the routed blocks' kept tokens) as sprintc's kernel
    fused_qk, short_tokens = False, 0

    def __init__(self, dim, heads, norm="none"):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm, self.k_norm = qk_norm(norm, dim // heads), qk_norm(norm, dim // heads)

    def split_heads(self, qkv, rope=None):
        """q, k, v (B, H, N, Dh) of the qkv projection's output, q and k normalised and rotated by RoPE: the
        expression sprintc's kernels (sprintc/kernels.py) compute."""
        B, N, D3 = qkv.shape
        q, k, v = qkv.view(B, N, 3, self.heads, D3 // 3 // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # (N, 2*Dh) or routed (B, M, 2*Dh): [cos | sin]
            cos, sin = rope.unsqueeze(-3).to(q.dtype).chunk(2, -1)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        return q, k, v

    def forward(self, x, rope=None):
        # On CUDA the inductor target's kernels (sprintc/kernels.py) make training and sampling steps faster than
        # Inductor's code for this expression (docs/PERFORMANCE.md, session J); elsewhere the plain form
        B, N, D = x.shape
        qkv = self.qkv(x)
        short = (N <= self.short_tokens and qkv.is_cuda and qkv.dtype in (torch.bfloat16, torch.float16)
                 and D // self.heads <= 128)
        if self.fused_qk and short:  # v read where qkv holds it (no copy of v and of its gradient)
            x = torch.ops.sprintc.qkv_attention(qkv, self.q_norm.weight, self.k_norm.weight, rope, self.q_norm.eps)[0]
            return self.proj(x.transpose(1, 2).reshape(B, N, D))
        if self.fused_qk and qkv.is_cuda:
            q, k, v = torch.ops.sprintc.qk_norm_rope(qkv, self.q_norm.weight, self.k_norm.weight, rope, self.q_norm.eps)
        else:
            q, k, v = self.split_heads(qkv, rope)
        x = torch.ops.sprintc.short_attention(q, k, v) if short else F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    # set by the inductor target on CUDA (sprintc/kernels.py): fc1's bias and GELU run in cuBLASLt's epilogue instead of
    # separate passes over the hidden activations, where no gradient is taken (sampling: gelu_epilogue) and in training
    # (gelu_train: the backward's GELU derivative too, sprintc/cublaslt.py)
    gelu_epilogue = False
    gelu_train = False

    def __init__(self, dim, ratio, kind="gelu_tanh"):
        super().__init__()
        self.kind = kind
        hidden = int(dim * ratio) if kind == "gelu_tanh" else int(2 * dim * ratio / 3 + 7) // 8 * 8
        self.fc1 = nn.Linear(dim, hidden * (2 if kind == "swiglu" else 1))
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        if self.kind == "swiglu":
            a, b = self.fc1(x).chunk(2, -1)
            return self.fc2(F.silu(a) * b)
        train = self.gelu_train and torch.is_grad_enabled()
        sample = self.gelu_epilogue and not torch.is_grad_enabled()
        if (train or sample) and x.is_cuda:
            # the epilogues compute in the matmul's half precision: autocast's, else the weights' own
            dt = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else self.fc1.weight.dtype
            if dt in (torch.bfloat16, torch.float16):
                flat = x.reshape(-1, x.shape[-1]).to(dt)
                if train:
                    from sprintc.cublaslt import gelu_mlp

                    p = [t.to(dt) for t in (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)]
                    return gelu_mlp(flat, *p).view(*x.shape[:-1], -1)
                # (this op has no backward, and its GELU is the tanh form on CUDA only)
                h = torch._addmm_activation(self.fc1.bias.to(dt), flat, self.fc1.weight.to(dt).t(), use_gelu=True)
                return self.fc2(h.view(*x.shape[:-1], -1))
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """adaLN-Zero transformer block; shape-preserving on the tokens (B, N, D)."""

    def __init__(self, m: ModelSpec):
        super().__init__()
        d = m.width
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, m.heads, m.qk_norm)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(d, m.mlp_ratio, m.mlp)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c, rope=None, mod=None):
        # mod: adaLN_modulation(c) computed outside, with other blocks' in one matmul (sprintc/modulation.py)
        mod = self.adaLN_modulation(c) if mod is None else mod
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, -1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class PatchEmbed(nn.Module):
    """(B, C, H, W) or (B, C, T, H, W) -> (B, N, D); tokens row-major, features ordered (c, p1, p2)."""

    def __init__(self, m: ModelSpec):
        super().__init__()
        self.p = m.patch
        self.proj = nn.Linear(m.input.channels * m.patch ** 2, m.width)

    def forward(self, x):
        p = self.p
        *lead, H, W = x.shape
        B, C = lead[0], lead[1]
        x = x.reshape(*lead, H // p, p, W // p, p)
        x = x.movedim(-3, -2).movedim(1, -3)  # (B, [T,] H/p, W/p, C, p, p)
        return self.proj(x.reshape(B, -1, C * p * p))


class Unpatchify(nn.Module):
    def __init__(self, m: ModelSpec):
        super().__init__()
        self.p, self.c, self.grid = m.patch, m.out_channels, m.grid

    def forward(self, x):
        p, c, B = self.p, self.c, x.shape[0]
        x = x.reshape(B, *self.grid, c, p, p)
        x = x.movedim(-3, 1)  # (B, C, [T,] h, w, p1, p2) -> (B, C, [T,] h, p1, w, p2)
        *lead, h, w, p1, p2 = x.shape
        x = x.permute(*range(len(lead)), -4, -2, -3, -1)
        return x.reshape(*lead, h * p1, w * p2)


class TimestepEmbedder(nn.Module):
    def __init__(self, d, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        a = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(a), torch.sin(a)], -1).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """num_classes + 1 rows: the last is the null label used for guidance (dropout is the runtime's)."""

    def __init__(self, num_classes, d):
        super().__init__()
        self.num_classes = num_classes  # the null label's index (what transform and samplers look for)
        self.embedding_table = nn.Embedding(num_classes + 1, d)

    def forward(self, y):
        return self.embedding_table(y)


def rope_angles(grid, head_dim, theta=10000.0):
    """[cos | sin] of the reference's 2D (or 3D) RoPE, (N, 2 * head_dim), tokens row-major."""
    axes = len(grid)
    d = 2 * (head_dim // (2 * axes))  # per-axis dims; leftovers get angle 0 (no rotation)
    f = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid], indexing="ij"), -1).reshape(-1, axes)
    ang = torch.cat([torch.repeat_interleave(coords[:, i : i + 1] * f, 2, -1) for i in range(axes)], -1)
    ang = F.pad(ang, (0, head_dim - ang.shape[-1]))
    return torch.cat([ang.cos(), ang.sin()], -1).float()


def sincos_pos(grid, dim):
    """Fixed sin-cos position embedding over a 2D/3D grid, (1, N, dim), as in MAE/DiT."""
    axes = len(grid)
    d = 2 * (dim // (2 * axes))
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in grid], indexing="ij"), -1).reshape(-1, axes)
    parts = []
    for i in reversed(range(axes)):  # DiT's order: w first, then h
        out = coords[:, i : i + 1] * omega
        parts += [out.sin(), out.cos()]
    emb = torch.cat(parts, -1)
    return F.pad(emb, (0, dim - emb.shape[-1])).float().unsqueeze(0)


class PosEmbed(nn.Module):
    def __init__(self, m: ModelSpec):
        super().__init__()
        if m.pos == "learned":
            self.weight = nn.Parameter(torch.zeros(1, m.tokens, m.width))
            nn.init.trunc_normal_(self.weight, std=0.02)
        else:
            self.register_buffer("weight", sincos_pos(m.grid, m.width), persistent=False)

    def forward(self, x):
        return x + self.weight.to(x.dtype)


class Rope(nn.Module):
    def __init__(self, m: ModelSpec):
        super().__init__()
        self.register_buffer("angles", rope_angles(m.grid, m.width // m.heads, m.rope_theta), persistent=False)

    def forward(self):
        return self.angles


class FinalLayer(nn.Module):
    def __init__(self, m: ModelSpec):
        super().__init__()
        d = m.width
        self.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, m.patch ** 2 * m.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, -1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Embedders, a stack of identical blocks, a head. Blocks are the leaves of the block graph."""

    def __init__(self, m: ModelSpec):
        super().__init__()
        self.cfg = m
        self.x_embedder = PatchEmbed(m)
        self.pos_embed = PosEmbed(m) if m.pos in ("learned", "sincos") else None
        self.rope = Rope(m) if m.pos == "rope" else None
        self.t_embedder = TimestepEmbedder(m.width)
        self.y_embedder = LabelEmbedder(m.num_classes, m.width) if m.num_classes else None
        self.blocks = nn.ModuleList(Block(m) for _ in range(m.depth))
        self.final_layer = FinalLayer(m)
        self.unpatchify = Unpatchify(m)
        self.initialize_weights()

    def initialize_weights(self):  # as DiT: xavier everywhere, adaLN and head zeroed
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                nn.init.zeros_(mod.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x, t, y=None):
        h = self.x_embedder(x)
        if self.pos_embed is not None:
            h = self.pos_embed(h)
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)
        if self.rope is not None:
            rope = self.rope()
            for blk in self.blocks:
                h = blk(h, c, rope)
        else:
            for blk in self.blocks:
                h = blk(h, c)
        return self.unpatchify(self.final_layer(h, c))


LEAF_TYPES = (Block, PatchEmbed, Unpatchify, TimestepEmbedder, LabelEmbedder, PosEmbed, Rope, FinalLayer)


def build_model(m: ModelSpec) -> DiT:
    return DiT(m)
