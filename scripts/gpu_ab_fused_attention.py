"""A/B of a fused QK-norm + RoPE attention (tried 2026-11-25, not kept: docs/PERFORMANCE.md). Runs a
sprintc command with this variant patched into sprintc.model.Attention: q and k normalised and rotated
in one expression on the (B, N, 2, H, Dh) layout of the qkv output, RoPE by flip and sign, no permutes.

    python3 scripts/gpu_ab_fused_attention.py bench specs/sit_xl_sprint.yaml --batch 128 ...
"""
import sys

import torch
import torch.nn.functional as F

import sprintc.model as M


def rotate_half(x):
    sign = torch.tensor([-1.0, 1.0], dtype=x.dtype, device=x.device)
    return (x.unflatten(-1, (-1, 2)).flip(-1) * sign).flatten(-2)


def apply_rope(x, cos, sin):
    return x * cos + rotate_half(x) * sin


def rms_rope(x, weight, eps, cos, sin):
    xf = x.float()
    scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (apply_rope(xf * weight.float(), cos.float(), sin.float()) * scale).to(x.dtype)


def fused_forward(self, x, rope=None):
    B, N, D = x.shape
    qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)
    if rope is not None:
        cos, sin = rope.unsqueeze(-2).chunk(2, -1)
    if rope is not None and isinstance(self.q_norm, M.RMSNorm) and isinstance(self.k_norm, M.RMSNorm):
        w = torch.stack([self.q_norm.weight, self.k_norm.weight]).unsqueeze(1)
        q, k = rms_rope(qkv[:, :, :2], w, self.q_norm.eps, cos.unsqueeze(-3), sin.unsqueeze(-3)).unbind(2)
    else:
        q, k = self.q_norm(qkv[:, :, 0]), self.k_norm(qkv[:, :, 1])
        if rope is not None:
            cos, sin = cos.to(q.dtype), sin.to(q.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2))
    return self.proj(x.transpose(1, 2).reshape(B, N, D))


M.Attention.forward = fused_forward

if __name__ == "__main__":
    from sprintc.cli import main

    sys.exit(main(sys.argv[1:]))
