"""Probe (session AD): the adaLN modulation's matmuls of a SiT-XL block, where one side has only the batch's rows.

A block's modulation is Linear(1152, 6912) on SiLU(c), c (B, 1152): its forward reads the 16 MB weight once for B
rows, and so do the backward's two products (the weight's gradient: 16 MB written; c's gradient: the weight read).
For each of the three at B = 58, 64, 116, 128 (the routed blocks' rows with path drop's skip, and all rows) this
times torch's call (what Inductor's graph calls), the fastest of cuBLASLt's heuristic candidates, and a Triton kernel
of a few tile shapes, and prints the bandwidth each reaches on the weight's bytes. Each time is the GPU's alone
(graph_time_ms: calls captured in a CUDA graph). The rest of a block's matmuls are timed by torch's call to tie the
profile's kernel names to shapes.

    python3 scripts/gpu_skinny_mm.py [--rows 58,64,116,128] [--json FILE]
"""
import argparse
import json

import torch
import triton
import triton.language as tl

from sprintc import cublaslt


def graph_time_ms(fn, reps: int = 20, groups: int = 3) -> float:
    """GPU milliseconds per call of fn: `reps` calls captured in a CUDA graph, the median of `groups` replays. Timed
    from the host (cublaslt.time_ms, session AD's call 3) these few-microsecond matmuls were launch-bound. Back to back,
    the 16 MB weight stays in L2, so these are lower than the same kernels inside a training step."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    return cublaslt.time_ms(graph.replay, reps=1, groups=groups) / reps


@triton.jit
def _mm_kernel(a, b, bias, c, M, N, K, s_am, s_ak, s_bk, s_bn, s_cs, s_cm, s_cn, K_PER,
               HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """c[split] = a[:, ks] @ b[ks, :] (+ bias) over the split's K_PER columns of a; grid (N tiles, M tiles, splits)."""
    pid_n, pid_m, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    k_end = tl.minimum(K, (split + 1) * K_PER)
    for k0 in range(split * K_PER, k_end, BLOCK_K):
        ka = k0 + rk
        x = tl.load(a + rm[:, None] * s_am + ka[None, :] * s_ak, mask=(rm[:, None] < M) & (ka[None, :] < k_end), other=0.0)
        y = tl.load(b + ka[:, None] * s_bk + rn[None, :] * s_bn, mask=(ka[:, None] < k_end) & (rn[None, :] < N), other=0.0)
        acc = tl.dot(x, y, acc)
    if HAS_BIAS:
        acc += tl.load(bias + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(c + split * s_cs + rm[:, None] * s_cm + rn[None, :] * s_cn, acc.to(c.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def triton_mm(a, b, bias=None, block=(64, 64, 64), splits=1, warps=4, stages=3):
    M, K = a.shape
    N = b.shape[1]
    bm, bn, bk = block
    per = triton.cdiv(triton.cdiv(K, splits), bk) * bk
    splits = triton.cdiv(K, per)
    out = torch.empty(splits, M, N, device=a.device, dtype=a.dtype if splits == 1 else torch.float32)
    grid = (triton.cdiv(N, bn), triton.cdiv(M, bm), splits)
    _mm_kernel[grid](a, b, bias if bias is not None else a, out, M, N, K, a.stride(0), a.stride(1), b.stride(0),
                     b.stride(1), out.stride(0), out.stride(1), out.stride(2), per, HAS_BIAS=bias is not None,
                     BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return out[0] if splits == 1 else out.sum(0).to(a.dtype)


def cublaslt_best(a, b, bias):
    epilogue = cublaslt.DEFAULT if bias is None else cublaslt.BIAS
    key = cublaslt._key(epilogue, a, b, torch.empty(1, device=a.device, dtype=a.dtype))
    plan = None if key is None else cublaslt._plan(*key)
    if plan is None:
        return None
    times = []
    for i in range(len(plan[4])):
        try:
            times.append(graph_time_ms(lambda: cublaslt._matmul(epilogue, a, b, bias, None, i)))
        except cublaslt.CublasLtError:  # a candidate cuBLASLt refuses
            pass
    return min(times) if times else None


def kernel_names(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    return sorted({e.name[:90] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})


CONFIGS = {  # (block_m, block_n, block_k), splits, warps, stages
    "fwd": [((64, 32, 128), 1, 4, 4), ((64, 64, 64), 1, 4, 4), ((64, 64, 128), 1, 4, 3), ((64, 32, 64), 1, 4, 5),
            ((64, 64, 64), 2, 4, 4), ((64, 32, 128), 2, 4, 4), ((128, 64, 64), 1, 4, 4), ((128, 32, 64), 1, 4, 4)],
    "dw": [((64, 64, 64), 1, 4, 2), ((128, 64, 64), 1, 4, 2), ((128, 128, 64), 1, 8, 2), ((64, 128, 64), 1, 4, 2),
           ((128, 128, 128), 1, 8, 2), ((64, 64, 128), 1, 4, 2)],
    "dx": [((64, 64, 64), 12, 4, 4), ((64, 64, 128), 12, 4, 4), ((64, 32, 64), 8, 4, 4), ((64, 64, 64), 24, 4, 4),
           ((64, 32, 128), 12, 4, 4), ((128, 64, 64), 12, 4, 4), ((128, 32, 128), 16, 4, 4), ((64, 64, 128), 6, 4, 4)],
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", default="58,64,116,128")
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    D, F = 1152, 6912
    w = torch.randn(F, D, device=dev, dtype=torch.bfloat16) * 0.02
    bias = torch.randn(F, device=dev, dtype=torch.bfloat16)
    weight_mb = w.numel() * 2 / 1e6
    results = []
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}")
    for rows in [int(r) for r in args.rows.split(",")]:
        x = torch.randn(rows, D, device=dev, dtype=torch.bfloat16)
        g = torch.randn(rows, F, device=dev, dtype=torch.bfloat16)
        cases = {  # name: (a, b, bias) as Inductor's graph calls torch: forward, weight gradient, input gradient
            "fwd": (x, w.t(), bias),
            "dw": (g.t(), x, None),
            "dx": (g, w, None),
        }
        for name, (a, b, bb) in cases.items():
            ref = (a.float() @ b.float() + (0 if bb is None else bb.float()))
            torch_fn = (lambda a=a, b=b, bb=bb: torch.mm(a, b) if bb is None else torch.addmm(bb, a, b))
            row = {"rows": rows, "op": name, "torch_us": 1e3 * graph_time_ms(torch_fn, reps=50, groups=5),
                   "torch_kernels": kernel_names(torch_fn)}
            best = cublaslt_best(a, b, bb)
            row["cublaslt_best_us"] = None if best is None else 1e3 * best
            trit = {}
            for block, splits, warps, stages in CONFIGS[name]:
                label = f"{block[0]}x{block[1]}x{block[2]} s{splits} w{warps} st{stages}"
                try:
                    out = triton_mm(a, b, bb, block, splits, warps, stages)
                    err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
                    us = 1e3 * graph_time_ms(lambda: triton_mm(a, b, bb, block, splits, warps, stages), reps=50, groups=5)
                    trit[label] = {"us": round(us, 2), "rel_err": err}
                except Exception as e:  # a tile that does not compile or fit: reported, the rest go on
                    trit[label] = {"error": str(e)[:120]}
            row["triton"] = trit
            fastest = min((v["us"], k) for k, v in trit.items() if "us" in v)
            row["triton_best"] = fastest
            gbs = lambda us: round(weight_mb / us, 2)  # TB/s (MB per us) on the weight's (or its gradient's) bytes
            print(f"rows {rows:4d} {name}: torch {row['torch_us']:.1f} us ({gbs(row['torch_us'])} TB/s) "
                  f"cuBLASLt best {row['cublaslt_best_us'] and round(row['cublaslt_best_us'], 1)} us, "
                  f"triton best {fastest[0]:.1f} us ({gbs(fastest[0])} TB/s) [{fastest[1]}] "
                  f"err {trit[fastest[1]]['rel_err']:.2e}; torch's kernels {row['torch_kernels']}")
            results.append(row)
    # the block's other matmuls at the routed blocks' 58 x 64 rows and the dense blocks' 64 x 256: names and times
    for tokens in (58 * 64, 64 * 256):
        x = torch.randn(tokens, D, device=dev, dtype=torch.bfloat16)
        for name, n in (("qkv", 3 * D), ("proj", D), ("fc1", 4 * D)):
            wt = torch.randn(n, D, device=dev, dtype=torch.bfloat16) * 0.02
            gy = torch.randn(tokens, n, device=dev, dtype=torch.bfloat16)
            for part, fn in (("fwd", lambda: torch.mm(x, wt.t())), ("dx", lambda: torch.mm(gy, wt)),
                             ("dw", lambda: torch.mm(gy.t(), x))):
                us = 1e3 * graph_time_ms(fn, reps=20, groups=3)
                print(f"tokens {tokens:6d} {name} {part}: {us:.1f} us {kernel_names(fn)}")
                results.append({"tokens": tokens, "op": f"{name}_{part}", "torch_us": us, "torch_kernels": kernel_names(fn)})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
