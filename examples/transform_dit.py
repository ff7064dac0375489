"""SPRINT on a DiT written the usual way (facebookresearch/DiT style), in one call.

    python examples/transform_dit.py

Builds a small DiT with random weights, applies sprintc's reference pipeline (2 dense blocks, sparse middle
blocks that see 25% of the tokens, 2 dense blocks, concat-linear fusion, path drop, PDG), prints the report,
measures the FLOPs of a training forward before and after, takes a training step and a PDG step.
"""
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import sprintc
from sprintc.graph import count_flops


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def attn(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))

    def forward(self, x, c):
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), s1, sc1))
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), s2, sc2))


class LabelEmbedder(nn.Module):
    """num_classes + 1 rows: the last is the null class that guidance (and PDG) uses."""

    def __init__(self, num_classes, dim):
        super().__init__()
        self.num_classes, self.embedding_table = num_classes, nn.Embedding(num_classes + 1, dim)

    def forward(self, y):
        return self.embedding_table(y)


class DiT(nn.Module):
    def __init__(self, size=16, patch=2, channels=4, dim=64, depth=6, heads=4, num_classes=10):
        super().__init__()
        self.patch, self.channels, self.grid = patch, channels, size // patch
        self.x_embedder = nn.Conv2d(channels, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid ** 2, dim) * 0.02)
        self.t_embedder = nn.Sequential(nn.Linear(64, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embedder = LabelEmbedder(num_classes, dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads) for _ in range(depth))
        self.final = nn.Sequential(nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6), nn.Linear(dim, patch * patch * channels))

    def forward(self, x, t, y):
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        freqs = torch.exp(-math.log(10000) * torch.arange(32, device=t.device) / 32)
        c = self.t_embedder(torch.cat([(t[:, None] * freqs).cos(), (t[:, None] * freqs).sin()], -1)) + self.y_embedder(y)
        for block in self.blocks:
            h = block(h, c)
        h = self.final(h)
        g, p = int(h.shape[1] ** 0.5), self.patch  # unpatchify: (B, N, p*p*C) -> (B, C, H, W)
        h = h.reshape(h.shape[0], g, g, p, p, self.channels)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(h.shape[0], self.channels, g * p, g * p)


def main():
    torch.manual_seed(0)
    model = DiT()
    dense = copy.deepcopy(model)
    report = sprintc.transform(model)  # the reference pipeline; or a TransformConfig / {"passes": [...]}
    print(report)

    x, t, y = torch.randn(8, 4, 16, 16), torch.rand(8), torch.randint(0, 10, (8,))
    model.train()
    before, after = count_flops(lambda: dense(x, t, y)), count_flops(lambda: model(x, t, y))
    print(f"\ntraining forward, batch 8: {before / 1e9:.3f} GFLOP dense -> {after / 1e9:.3f} GFLOP routed "
          f"(x{after / before:.3f}; the report predicted x{report.flop_ratio:.3f})")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss = (model(x, t, y) - x).square().mean()  # any objective: the model keeps its forward(x, t, y)
    loss.backward()
    opt.step()
    print(f"training step: loss {loss.item():.4f}")

    model.eval()  # PDG: [cond; uncond] batch, the middle blocks run on the conditional half only
    null = torch.full_like(y, 10)
    out = model.forward_guidance(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
    cond, weak = out.chunk(2)
    guided = weak + 2.0 * (cond - weak)
    print(f"PDG step: {tuple(guided.shape)}")

    sprintc.untransform(model)  # the original forward again; the trained weights stay
    print(f"untransformed: parameters under sprint. left: {sum(k.startswith('sprint.') for k in model.state_dict())}")


if __name__ == "__main__":
    main()
