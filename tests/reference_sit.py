"""An independent, literal transcription of the reference SPRINT SiT as ../shared/conformance/README.md
describes it (its own module names: encoder_blocks / middle_blocks / decoder_blocks, renoise_linear,
mask_token). It is checked against the fixture, then used to produce reference outputs for configs the
fixture does not cover. Deliberately written without any sprintc code."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class RefRMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d) * 0.1 + 1)

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * self.weight


def rotate_half(x):
    out = torch.empty_like(x)
    out[..., 0::2] = -x[..., 1::2]
    out[..., 1::2] = x[..., 0::2]
    return out


class RefAttention(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.q_norm, self.k_norm = RefRMSNorm(d // h), RefRMSNorm(d // h)

    def forward(self, x, ang):  # ang: (B, N, Dh)
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.h, D // self.h)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, h, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = ang.cos()[:, :, None], ang.sin()[:, :, None]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2)) * (D // self.h) ** -0.5
        out = att.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class RefMlp(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class RefBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn, self.mlp = RefAttention(d, h), RefMlp(d)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c, ang):
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), s1, sc1), ang)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), s2, sc2))


class RefFinal(nn.Module):
    def __init__(self, d, out):
        super().__init__()
        self.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class RefSiT(nn.Module):
    def __init__(self, *, context_size, patch_size, in_channels, hidden_size, num_heads, num_classes,
                 encoder_depth, middle_depth, decoder_depth, **_):
        super().__init__()
        d, p = hidden_size, patch_size
        self.p, self.c, self.size, self.h = p, in_channels, context_size, num_heads
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Linear(in_channels * p * p, d)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, d)
        self.encoder_blocks = nn.ModuleList(RefBlock(d, num_heads) for _ in range(encoder_depth))
        self.middle_blocks = nn.ModuleList(RefBlock(d, num_heads) for _ in range(middle_depth))
        self.decoder_blocks = nn.ModuleList(RefBlock(d, num_heads) for _ in range(decoder_depth))
        self.renoise_linear = nn.Linear(2 * d, d)
        self.mask_token = nn.Parameter(torch.randn(1, 1, d))
        self.final_layer = RefFinal(d, p * p * in_channels)

    def angles(self):
        g, dh = self.size // self.p, self.x_embedder.proj.out_features // self.h
        d = dh // 2
        f = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        out = torch.zeros(g * g, dh, dtype=torch.float64)
        for n in range(g * g):
            r, w = divmod(n, g)
            out[n] = torch.cat([torch.repeat_interleave(r * f, 2), torch.repeat_interleave(w * f, 2)])
        return out.float()

    def embed(self, x, t, y):
        B, C, H, W = x.shape
        p = self.p
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C * p * p)
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        a = t[:, None].float() * freqs[None]
        temb = self.t_embedder.mlp(torch.cat([torch.cos(a), torch.sin(a)], -1))
        return self.x_embedder.proj(x), temb + self.y_embedder.embedding_table(y)

    def head(self, x, c):
        x = self.final_layer(x, c)
        B = x.shape[0]
        g, p = self.size // self.p, self.p
        x = x.reshape(B, g, g, self.c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(B, self.c, g * p, g * p)

    def forward(self, x, t, y, ids_keep=None, pdg=False):
        x, c = self.embed(x, t, y)
        B, N, D = x.shape
        ang = self.angles()[None].expand(B, -1, -1)
        for blk in self.encoder_blocks:
            x = blk(x, c, ang)
        e = x
        if pdg:  # middle on the conditional half only, mask token for the rest
            half = B // 2
            m, mc, ma = x[:half], c[:half], ang[:half]
            for blk in self.middle_blocks:
                m = blk(m, mc, ma)
            m = torch.cat([m, self.mask_token.expand(B - half, N, D)], 0)
        elif ids_keep is not None:
            m = torch.stack([x[b, ids_keep[b]] for b in range(B)])
            ma = torch.stack([ang[b, ids_keep[b]] for b in range(B)])
            for blk in self.middle_blocks:
                m = blk(m, c, ma)
            full = self.mask_token.expand(B, N, D).clone()
            for b in range(B):
                full[b, ids_keep[b]] = m[b]
            m = full
        else:
            m = x
            for blk in self.middle_blocks:
                m = blk(m, c, ang)
        x = self.renoise_linear(torch.cat([m, e], -1))
        for blk in self.decoder_blocks:
            x = blk(x, c, ang)
        return self.head(x, c)
