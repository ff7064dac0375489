"""The routed blocks' attention with q/k RMSNorm + RoPE (sprintc/kernels.py) at the XL shapes of a training step (16 heads
of 72, 64 kept tokens, RoPE rows drawn per sample), bf16: qkv_attention (one kernel each way) at several
QKV_ATTENTION_WARPS (forward, backward) against qk_norm_rope's kernel then short_attention's (two each way): ms per call
of the forward and of forward + backward (CUDA graph, median of 5), and the relative error of the output and of the
gradients of qkv and the two norm weights against the model's expression in float32.
On the device: python3 scripts/gpu_qkv_attention.py [--batch 128] [--json FILE]"""
import argparse
import json

import torch
import torch.nn.functional as F

import sprintc.kernels as K
from gpu_qk_kernels import timed
from sprintc.model import Attention, rope_angles

H, DH, N = 16, 72, 64
ARMS = [(8, 8), (8, 4), (4, 8), (4, 4)]


def two_ops(qkv, wq, wk, rope, eps):
    return K.short_attention(*K.qk_norm_rope(qkv, wq, wk, rope, eps))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--json")
    args = p.parse_args()
    B = args.batch
    torch.manual_seed(0)
    attn = Attention(H * DH, H, "rms").cuda()
    for w in (attn.q_norm.weight, attn.k_norm.weight):
        w.data.uniform_(0.5, 1.5)
    rope = rope_angles((16, 16), DH).cuda()[torch.stack([torch.randperm(256)[:N] for _ in range(B)]).cuda()]
    qkv = torch.randn(B, N, 3 * H * DH, device="cuda").bfloat16().requires_grad_()
    wq, wk = (w.detach().bfloat16().requires_grad_() for w in (attn.q_norm.weight, attn.k_norm.weight))
    grad = torch.randn(B, N, H, DH, device="cuda").bfloat16().transpose(1, 2)
    wrt, eps = (qkv, wq, wk), attn.q_norm.eps

    qf = qkv.detach().float().requires_grad_()
    ref = F.scaled_dot_product_attention(*attn.split_heads(qf, rope))
    want = torch.autograd.grad(ref, (qf, attn.q_norm.weight, attn.k_norm.weight), grad.float())

    rows = []
    for name, fn, warps in [("two ops", two_ops, (4, 4))] + [("qkv_attention", K.qkv_attention, w) for w in ARMS]:
        K.QKV_ATTENTION_WARPS = warps
        try:
            out = fn(qkv, wq, wk, rope, eps)
            got = torch.autograd.grad(out, wrt, grad)
            err = [round(((a.float() - b).norm() / b.norm()).item(), 5) for a, b in zip([out, *got], [ref, *want])]
            del out, got
            fwd = timed(lambda: fn(qkv, wq, wk, rope, eps))
            both = timed(lambda: torch.autograd.grad(fn(qkv, wq, wk, rope, eps), wrt, grad))
        except Exception as e:  # one arm's failure leaves the others
            err, fwd, both = repr(e)[:300], None, None
        rows.append({"batch": B, "code": name, "warps": ",".join(map(str, warps)), "fwd_ms": fwd and round(fwd, 4),
                     "fwd_bwd_ms": both and round(both, 4), "rel_err_out_dqkv_dwq_dwk": err})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
