"""Each of cuBLASLt's candidate algorithms for the MLP's GELU epilogues (sprintc/cublaslt.py) timed alone, beside
the same work done by torch's cuBLAS matmuls and by Inductor's compiled passes, at XL's widths for the routed (8192
rows) and dense (32768) sizes of batch 128, bf16. Forward: fc1 + bias + GELU with the pre-activation kept; backward:
fc2's input gradient times the GELU's derivative, and fc1's bias gradient. Median of 5 groups of 10 launches.
`--rows` sets the row counts (e.g. 3712,16384: batch 64's middle after path drop's skip, and its dense blocks);
`--candidates N` asks the heuristic for N candidates instead of sprintc's CANDIDATES (session AF).
    python3 scripts/gpu_gelu_algos.py [--rows 8192,32768] [--candidates N] [--json FILE]"""
import argparse
import json

import torch
import torch.nn.functional as F

from sprintc import cublaslt

D, HIDDEN = 1152, 4608
DGELU_BGRAD = 208  # cublasLt.h: the GELU's derivative and the bias gradient (call 2: 0.45 ms at 8192 rows, every candidate)


def ms(fn):
    return round(cublaslt.time_ms(fn, reps=10, groups=5), 4)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="8192,32768")
    ap.add_argument("--candidates", type=int, default=cublaslt.CANDIDATES)
    ap.add_argument("--json")
    args = ap.parse_args()
    cublaslt.CANDIDATES = args.candidates
    small = min(map(int, args.rows.split(",")))
    print(torch.__version__, torch.cuda.get_device_name())
    rows = []

    def row(**r):
        rows.append(r)
        print(json.dumps(r))

    bf = dict(device="cuda", dtype=torch.bfloat16)
    inductor_fwd = torch.compile(lambda x, w, b: (lambda h: (F.gelu(h, approximate="tanh"), h))(F.linear(x, w, b)))
    column_sum = torch.compile(lambda dh: dh.sum(0))
    inductor_bwd = torch.compile(lambda g, w, h: (lambda dh: (dh, dh.sum(0)))(
        torch.ops.aten.gelu_backward(g @ w, h, approximate="tanh")))
    for m in map(int, args.rows.split(",")):
        x, w1, b1 = torch.randn(m, D, **bf), torch.randn(HIDDEN, D, **bf) * D ** -0.5, torch.randn(HIDDEN, **bf)
        g, w2 = torch.randn(m, D, **bf), torch.randn(D, HIDDEN, **bf) * HIDDEN ** -0.5
        h = torch.randn(m, HIDDEN, **bf)
        db = torch.empty(HIDDEN, **bf)
        row(rows=m, op="fwd", code="torch mm", ms=ms(lambda: torch.mm(x, w1.t())))
        row(rows=m, op="fwd", code="torch addmm (bias epilogue)", ms=ms(lambda: torch.addmm(b1, x, w1.t())))
        row(rows=m, op="fwd", code="torch _addmm_activation gelu (no aux)",
            ms=ms(lambda: torch._addmm_activation(b1, x, w1.t(), use_gelu=True)))
        row(rows=m, op="fwd", code="inductor linear + gelu", ms=ms(lambda: inductor_fwd(x, w1, b1)))
        row(rows=m, op="fwd", code="sprintc linear_gelu_aux (fastest)", ms=ms(lambda: cublaslt.linear_gelu_aux(x, w1, b1)))
        for i in range(cublaslt.CANDIDATES):
            if cublaslt._matmul(cublaslt.GELU_AUX_BIAS, x, w1.t(), b1, h, candidate=i) is None:
                break  # (no candidate i)
            t = ms(lambda: cublaslt._matmul(cublaslt.GELU_AUX_BIAS, x, w1.t(), b1, h, candidate=i))
            row(rows=m, op="fwd", code=f"GELU_AUX_BIAS candidate {i}", ms=t)
        row(rows=m, op="bwd", code="torch mm", ms=ms(lambda: torch.mm(g, w2)))
        row(rows=m, op="bwd", code="inductor mm + gelu_backward + sum", ms=ms(lambda: inductor_bwd(g, w2, h)))
        row(rows=m, op="bwd", code="sprintc matmul_dgelu (fastest)", ms=ms(lambda: cublaslt.matmul_dgelu(g, w2, h)))
        row(rows=m, op="bwd", code="sprintc matmul_dgelu + inductor sum", ms=ms(lambda: column_sum(cublaslt.matmul_dgelu(g, w2, h))))
        for epi, name, bias in ((cublaslt.DGELU, "DGELU", None), (DGELU_BGRAD, "DGELU_BGRAD", db)):
            for i in range(cublaslt.CANDIDATES if m == small or epi == cublaslt.DGELU else 0):
                if cublaslt._matmul(epi, g, w2, bias, h, candidate=i) is None:
                    break
                t = ms(lambda: cublaslt._matmul(epi, g, w2, bias, h, candidate=i))
                row(rows=m, op="bwd", code=f"{name} candidate {i}", ms=t)
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
