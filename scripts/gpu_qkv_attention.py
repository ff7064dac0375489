"""The routed blocks' attention at the XL shapes of a training step (16 heads of 72, 64 kept tokens, RoPE rows gathered
per sample, RMS q/k norms), bf16: qkv_attention (sprintc/kernels.py: norm + RoPE + attention from the qkv projection's
output) at several QKV_ATTENTION layouts and warps, against the separate kernels (qk_norm_rope, then short_attention)
that it replaces. ms per call of the forward and of forward + backward (CUDA graph, median of 5), and the relative
error of the output and gradients against the expression in float32.
On the device: python3 scripts/gpu_qkv_attention.py [--batch 128] [JSON]"""
import argparse
import json

import torch
import torch.nn.functional as F

import sprintc.kernels as K
from gpu_qk_kernels import timed
from sprintc.model import Attention, rope_angles

H, DH, N = 16, 72, 64
ARMS = [(True, 4, 4), (True, 4, 8), (True, 8, 8), (False, 8, 8), (False, 4, 8)]


def separate(qkv, wq, wk, rope):
    q, k, v = K.qk_norm_rope(qkv, wq, wk, rope, 1e-6)
    o = K.short_attention(q, k, v)
    return o.transpose(1, 2).reshape(qkv.shape[0], qkv.shape[1], -1)


def fused(qkv, wq, wk, rope):
    return K.qkv_attention(qkv, wq, wk, rope, H, 1e-6)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("json", nargs="?")
    args = p.parse_args()
    B = args.batch
    torch.manual_seed(0)
    attn = Attention(H * DH, H, "rms").cuda()
    for w in (attn.q_norm.weight, attn.k_norm.weight):
        w.data.uniform_(0.5, 1.5)
    weights = (attn.q_norm.weight, attn.k_norm.weight)
    rope = rope_angles((16, 16), DH).cuda()[torch.stack([torch.randperm(256)[:N] for _ in range(B)]).cuda()]
    qkv = torch.randn(B, N, 3 * H * DH, device="cuda").bfloat16().requires_grad_()
    grad = torch.randn(B, N, H * DH, device="cuda").bfloat16()
    leaves = (qkv, *weights)
    q32 = qkv.detach().float().requires_grad_()
    ref = F.scaled_dot_product_attention(*attn.split_heads(q32, rope)).transpose(1, 2).reshape(B, N, -1)
    want = [ref.detach(), *torch.autograd.grad(ref, (q32, *weights), grad.float())]
    rows = []
    for arm in [None] + ARMS:
        fn = separate if arm is None else fused
        if arm is not None:
            K.QKV_ATTENTION = (True, *arm)
        try:
            out = fn(qkv, *weights, rope)
            got = [out, *torch.autograd.grad(out, leaves, grad)]
            err = [round(((a.float() - b).norm() / b.norm()).item(), 5) for a, b in zip(got, want)]
            del out, got
            fwd = timed(lambda: fn(qkv, *weights, rope))
            both = timed(lambda: torch.autograd.grad(fn(qkv, *weights, rope), leaves, grad))
        except Exception as e:  # one arm's failure leaves the others
            err, fwd, both = repr(e)[:300], None, None
        rows.append({"batch": B, "arm": "separate" if arm is None else "split %d, warps %d,%d" % arm,
                     "fwd_ms": fwd and round(fwd, 4), "fwd_bwd_ms": both and round(both, 4), "rel_err": err})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
