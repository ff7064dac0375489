"""Times sprintc's q/k RMSNorm + RoPE kernels (sprintc/kernels.py) alone against Inductor's code for the model's
expression, at the XL shapes of a training step at batch 128: a dense block (256 tokens) and a routed one (64 of
them, RoPE rows gathered per sample). Forward, and forward + backward, each in a CUDA graph; several tile
configurations of the kernels (SPRINTC_QK_BLOCKS); and the backward alone for q and k only, as the routed blocks run it
(qkv_attention: v's gradient is the attention's), bwd_qk_ms. On the device: python3 scripts/gpu_qk_kernels.py [--json F]
"""
import argparse
import json
import os

import torch

from sprintc.kernels import _qk_backward, qk_norm_rope
from sprintc.model import Attention, rope_angles

# SPRINTC_QK_BLOCKS: forward tokens per tile, warps; backward tokens, warps, programs per SM, stages (registers by
# ptxas for sm_90 at XL's 16 x 72 heads: backward 1 token x 4 warps 96 at 1-3 stages, so at most 5 programs per SM;
# 2 x 8 101-110. Stages above 1 load the next tiles through shared memory: 9 KB per program at 2 stages, 18 at 3)
CONFIGS = ["4,4,1,4,5,1", "4,4,1,4,5,2", "4,4,1,4,5,3", "4,4,1,4,5,4", "4,4,1,4,4,2", "4,4,1,4,4,3", "4,4,1,4,3,3",
           "4,4,2,8,2,2", "4,4,2,8,2,3"]


def timed(fn, reps=50):
    """ms per call of fn replayed from a CUDA graph (no launch overhead), median of 5 runs of reps calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    runs = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        runs.append(a.elapsed_time(b) / reps)
    return sorted(runs)[2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    B, H, DH = 128, 16, 72
    attn = Attention(H * DH, H, "rms").cuda()
    table = rope_angles((16, 16), DH).cuda()

    def expression(qkv, wq, wk, rope):  # the model's unfused branch (wq, wk: attn's own norm weights)
        return attn.split_heads(qkv, rope)

    inductor = torch.compile(expression, fullgraph=True, dynamic=False)
    rows = []
    for name, n in (("dense", 256), ("routed", 64)):
        rope = table if n == 256 else table[torch.stack([torch.randperm(256)[:n] for _ in range(B)]).cuda()]
        qkv = torch.randn(B, n, 3 * H * DH, device="cuda").bfloat16().requires_grad_()
        w = (attn.q_norm.weight, attn.k_norm.weight)
        # token-major, as attention's backward gives them for the kernels' token-major q, k, v
        grads = [torch.randn(B, n, H, DH, device="cuda").bfloat16().transpose(1, 2) for _ in range(3)]
        traffic = qkv.numel() * 2 * 2  # bytes: qkv read once, q, k, v written once (forward)

        def fwd(f):
            return lambda: f(qkv, *w, rope) if f is inductor else f(qkv, *w, rope, 1e-6)

        def fwd_bwd(f):
            def run():
                out = f(qkv, *w, rope) if f is inductor else f(qkv, *w, rope, 1e-6)
                torch.autograd.grad(out, (qkv, *w), grads)
            return run

        for label, f in [("inductor", inductor)] + [(f"kernels {c}", qk_norm_rope) for c in CONFIGS]:
            if label.startswith("kernels"):
                os.environ["SPRINTC_QK_BLOCKS"] = label.split()[1]
            try:
                row = {"block": name, "tokens": n, "code": label, "fwd_ms": round(timed(fwd(f)), 4),
                       "fwd_bwd_ms": round(timed(fwd_bwd(f)), 4)}
            except Exception as e:  # a tiling Triton cannot compile here: noted, the others still run
                print({"block": name, "code": label, "error": f"{type(e).__name__}: {e}"[:300]}, flush=True)
                continue
            row["fwd_TB_s"] = round(traffic / row["fwd_ms"] / 1e9, 2)
            if f is qk_norm_rope:  # reads dq, dk and q, k of qkv, writes the q and k columns of dqkv: 2/3 of qkv, 3 times
                dqkv = torch.empty_like(qkv)
                row["bwd_qk_ms"] = round(timed(lambda: _qk_backward(grads[0], grads[1], None, qkv.detach(), dqkv,
                                                                    *w, rope, 1e-6)), 4)
                row["bwd_qk_TB_s"] = round(qkv.numel() * 2 * 2 / row["bwd_qk_ms"] / 1e9, 2)
            rows.append(row)
            print(row, flush=True)
    os.environ.pop("SPRINTC_QK_BLOCKS", None)
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
