"""The routed blocks' attention at the XL shapes of a training step (16 heads of 72, 64 kept tokens, RoPE rows gathered
per sample, RMS q/k norms), bf16: qkv_attention (sprintc/kernels.py: norm + RoPE + attention from the qkv projection's
output) at several QKV_ATTENTION layouts and warps, against the separate kernels (qk_norm_rope, then short_attention)
that it replaces. Each arm runs in its own process (a fault in one leaves the others): its relative error against the
expression in float32 (forward, then backward, each synchronised), then ms per call of the forward and of forward +
backward (CUDA graph, median of 5). `--check` runs only the errors, for every combination of norm and RoPE.
On the device: python3 scripts/gpu_qkv_attention.py [--batch 128] [--check] [JSON]"""
import argparse
import json
import subprocess
import sys

import torch
import torch.nn.functional as F

H, DH, N = 16, 72, 64
ARMS = [None, (1, 4, 4), (1, 4, 8), (1, 8, 8), (0, 8, 8), (0, 4, 8)]


def one(B, arm, norm, rope_kind, timing):
    import sprintc.kernels as K
    from gpu_qk_kernels import timed
    from sprintc.model import Attention, rope_angles

    torch.manual_seed(0)
    attn = Attention(H * DH, H, norm).cuda()
    weights = []
    if norm == "rms":
        for w in (attn.q_norm.weight, attn.k_norm.weight):
            w.data.uniform_(0.5, 1.5)
        weights = [w.detach().clone().requires_grad_() for w in (attn.q_norm.weight, attn.k_norm.weight)]
    rope = None
    if rope_kind == "routed":
        rope = rope_angles((16, 16), DH).cuda()[torch.stack([torch.randperm(256)[:N] for _ in range(B)]).cuda()]
    qkv = torch.randn(B, N, 3 * H * DH, device="cuda").bfloat16().requires_grad_()
    grad = torch.randn(B, N, H * DH, device="cuda").bfloat16()
    leaves = (qkv, *weights)
    wq, wk = weights if weights else (None, None)
    if arm is None:
        assert norm == "rms"

        def fn():
            q, k, v = K.qk_norm_rope(qkv, wq, wk, rope, 1e-6)
            return K.short_attention(q, k, v).transpose(1, 2).reshape(B, N, -1)
    else:
        K.QKV_ATTENTION = (True, bool(arm[0]), arm[1], arm[2])

        def fn():
            return K.qkv_attention(qkv, wq, wk, rope, H, 1e-6)
    row = {"batch": B, "arm": "separate" if arm is None else "split %d, warps %d,%d" % arm, "norm": norm,
           "rope": rope_kind}
    q32 = qkv.detach().float().requires_grad_()
    w32 = (attn.q_norm.weight, attn.k_norm.weight) if weights else ()
    ref = F.scaled_dot_product_attention(*attn.split_heads(q32, rope)).transpose(1, 2).reshape(B, N, -1)
    want = [ref.detach(), *torch.autograd.grad(ref, (q32, *w32), grad.float())]
    del ref
    out = fn()
    torch.cuda.synchronize()
    row["fwd_err"] = round(((out.float() - want[0]).norm() / want[0].norm()).item(), 5)
    print("ROW " + json.dumps(row), flush=True)  # a fault in the backward leaves this
    got = torch.autograd.grad(out, leaves, grad)
    torch.cuda.synchronize()
    row["bwd_err"] = [round(((a.float() - b).norm() / b.norm()).item(), 5) for a, b in zip(got, want[1:])]
    del out, got
    if timing:
        row["fwd_ms"] = round(timed(fn), 4)
        row["fwd_bwd_ms"] = round(timed(lambda: torch.autograd.grad(fn(), leaves, grad)), 4)
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--check", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("json", nargs="?")
    args = p.parse_args()
    if args.one:  # a child: one arm
        arm, norm, rope, timing = json.loads(args.one)
        print("ROW " + json.dumps(one(args.batch, arm and tuple(arm), norm, rope, timing)), flush=True)  # the last counts
        return
    runs = [(a, n, r, False) for a in (ARMS[1], ARMS[4]) for n in ("rms", "none") for r in ("routed", "none")] if args.check \
        else [(a, "rms", "routed", True) for a in ARMS]
    rows = []
    for arm, norm, rope, timing in runs:
        done = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--one",
                               json.dumps([arm, norm, rope, timing])], capture_output=True, text=True, timeout=300)
        found = [l[4:] for l in done.stdout.splitlines() if l.startswith("ROW ")]
        row = json.loads(found[-1]) if found else {"arm": arm, "norm": norm, "rope": rope}
        if done.returncode:
            row.update(rc=done.returncode, error=done.stderr.strip().splitlines()[-3:])
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
