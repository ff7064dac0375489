"""A/B check of the fused QK-norm + RoPE attention: runs a sprintc command with the attention of commit
87a5865 (q, k, v permuted to (B, H, N, Dh), separate RMSNorms, RoPE by unbind/stack) patched in.

    python3 scripts/gpu_ab_attention.py bench specs/sit_xl_sprint.yaml --batch 128 --graphs routed ...
"""
import sys

import torch
import torch.nn.functional as F

import sprintc.model as M


def old_rotate_half(x):
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x2, x1), -1).flatten(-2)


def old_forward(self, x, rope=None):
    B, N, D = x.shape
    q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
    q, k = self.q_norm(q), self.k_norm(k)
    if rope is not None:
        cos, sin = rope.unsqueeze(-3).to(q.dtype).chunk(2, -1)
        q, k = q * cos + old_rotate_half(q) * sin, k * cos + old_rotate_half(k) * sin
    x = F.scaled_dot_product_attention(q, k, v)
    return self.proj(x.transpose(1, 2).reshape(B, N, D))


M.Attention.forward = old_forward

if __name__ == "__main__":
    from sprintc.cli import main

    sys.exit(main(sys.argv[1:]))
