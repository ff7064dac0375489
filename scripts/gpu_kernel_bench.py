"""Times sprintc's q/k RMSNorm + RoPE kernels alone on a GPU, at SiT-XL's shapes, against Inductor's code for the
same expression: forward, the Triton backward, and the torch-ops backward compiled by Inductor. Also prints the
strides attention's backward gives dq/dk/dv (the Triton backward reads them).
    python3 scripts/gpu_kernel_bench.py [--batch 128] [--tokens 256,64]"""
import argparse

import torch
import torch.nn.functional as F

import sprintc.kernels as K
from sprintc.model import Attention, rope_angles, rotate_half


def ms(fn, reps=20):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return round(start.elapsed_time(end) / reps, 4)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--tokens", default="256,64")
    a = p.parse_args()
    H, DH = 16, 72
    attn = Attention(H * DH, H, "rms").cuda()
    table = rope_angles((16, 16), DH).cuda()
    for N in map(int, a.tokens.split(",")):
        B = a.batch
        rope = table if N == 256 else table[torch.stack([torch.randperm(256, device="cuda")[:N] for _ in range(B)])]
        qkv = torch.randn(B, N, 3 * H * DH, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        wq, wk = attn.q_norm.weight, attn.k_norm.weight
        q, k, v = K.qk_norm_rope(qkv, wq, wk, rope, 1e-6)
        o = F.scaled_dot_product_attention(q, k, v)
        dq, dk, dv = torch.autograd.grad(o, (q, k, v), torch.randn_like(o))
        print(f"N={N}: attention backward gives dq {tuple(dq.stride())} dk {tuple(dk.stride())} dv {tuple(dv.stride())}")
        x = qkv.detach()
        inductor_fwd = torch.compile(lambda t: attn_expr(attn, t, rope), fullgraph=True)
        torch_bwd = torch.compile(K.backward_expression, fullgraph=True)
        gbytes = x.numel() * 2 * 2 / 1e9  # read qkv, write q/k/v
        rows = {
            "triton forward": ms(lambda: K.qk_norm_rope(x, wq, wk, rope, 1e-6)),
            "inductor forward (expression)": ms(lambda: inductor_fwd(x)),
            "triton backward": ms(lambda: K.qk_norm_rope_backward(dq, dk, dv, x, wq, wk, rope, 1e-6)),
            "triton backward, head-major grads (copied first)": ms(lambda: K.qk_norm_rope_backward(dq.contiguous(), dk.contiguous(), dv.contiguous(), x, wq, wk, rope, 1e-6)),
            "inductor backward (backward_expression)": ms(lambda: torch_bwd(dq, dk, dv, x, wq, wk, rope, 1e-6)),
        }
        for name, t in rows.items():
            print(f"  N={N} B={B} {name}: {t} ms (forward traffic {gbytes:.2f} GB: {gbytes / t:.2f} TB/s)")


def attn_expr(attn, qkv, rope):
    B, N, D3 = qkv.shape
    q, k, v = qkv.view(B, N, 3, attn.heads, D3 // 3 // attn.heads).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = rope.unsqueeze(-3).to(q.dtype).chunk(2, -1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v


if __name__ == "__main__":
    main()
