"""Which cuBLASLt launches come with a memset (session AF). In the captured routed step at 64, 121 memsets per step
(0.8 us each, plus 2-4 us of idle GPU around each) sat right before the matmuls sprintc launches through cuBLASLt
itself (sprintc/cublaslt.py: the GELU epilogues and the tuned matmuls) and before cuDNN's attention, not before most
of torch's own calls. For batch 64's shapes, each of the heuristic's candidates: its workspace size, and for 5
launches captured in a CUDA graph (as in the step) the memsets per launch and the time per launch (replays timed by
CUDA events, memsets included), with the workspace preference as shipped and with none (a plan without workspace);
torch's mm / addmm beside them. (Eager launches all came with a memset, torch's too: call 2.)
    python3 scripts/gpu_memsets.py [--json FILE]"""
import argparse
import ctypes
import json

import torch
from torch.profiler import ProfilerActivity, profile

from sprintc import cublaslt as lt

D, HIDDEN = 1152, 4608
PERSISTENT = None


def launch(plan, a, b, out, i):
    desc, la, lb, ld, found = plan
    h = found[i]
    space, size = PERSISTENT, h.workspace  # (allocated per call or not: the same memsets, call 2)
    lt._check(lt._lib().cublasLtMatmul(lt._handle(a.device.index), desc, ctypes.byref(lt._ONE), b.data_ptr(), la,
                                       a.data_ptr(), lb, ctypes.byref(lt._ZERO), out.data_ptr(), ld, out.data_ptr(), ld,
                                       ctypes.byref(h.algo), space.data_ptr(), size,
                                       torch.cuda.current_stream().cuda_stream), "cublasLtMatmul")


def captured(fn, n=5):
    """(memsets per launch, ms per launch) of n launches of fn captured in one CUDA graph."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    g.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        g.replay()
        torch.cuda.synchronize()
    sets = sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and "Memset" in e.name)
    return sets / n, round(lt.time_ms(g.replay, reps=10) / n, 4)


def main():
    global PERSISTENT
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name())
    bf = dict(device="cuda", dtype=torch.bfloat16)
    PERSISTENT = torch.empty(lt.WORKSPACE_BYTES, device="cuda", dtype=torch.uint8)
    rows = []
    for m in (3712, 16384):
        x, w_qkv, b_qkv = torch.randn(m, D, **bf), torch.randn(3 * D, D, **bf), torch.randn(3 * D, **bf)
        w1, b1 = torch.randn(HIDDEN, D, **bf), torch.randn(HIDDEN, **bf)
        g, w2, hpre = torch.randn(m, D, **bf), torch.randn(D, HIDDEN, **bf), torch.randn(m, HIDDEN, **bf)
        cases = [("qkv fwd + bias", lt.BIAS, x, w_qkv.t(), b_qkv, None, lambda: torch.addmm(b_qkv, x, w_qkv.t())),
                 ("fc1 GELU_AUX_BIAS", lt.GELU_AUX_BIAS, x, w1.t(), b1, torch.empty(m, HIDDEN, **bf),
                  lambda: torch.addmm(b1, x, w1.t())),
                 ("fc2 dx DGELU", lt.DGELU, g, w2, None, hpre, lambda: torch.mm(g, w2)),
                 ("fc2 dx plain", lt.DEFAULT, g, w2, None, None, lambda: torch.mm(g, w2))]
        for name, epi, a, b, bias, aux, torch_fn in cases:
            r = dict(rows=m, case=name)
            r["torch_memsets"], r["torch_ms"] = captured(torch_fn)
            out = torch.empty(a.shape[0], b.shape[1], **bf)
            for preference in ("shipped", "no_workspace"):
                shipped, lt.WORKSPACE_BYTES = lt.WORKSPACE_BYTES, (lt.WORKSPACE_BYTES if preference == "shipped" else 0)
                plan = lt._plan.__wrapped__(*lt._key(epi, a, b, out))  # (uncached: a plan per preference)
                lt.WORKSPACE_BYTES = shipped
                cands = []
                for i in range(len(plan[4]) if plan else 0):
                    if bias is not None:
                        lt._set("cublasLtMatmulDescSetAttribute", plan[0], lt._BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
                    if aux is not None:
                        lt._set("cublasLtMatmulDescSetAttribute", plan[0], lt._AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
                    c = dict(i=i, workspace=plan[4][i].workspace)
                    try:
                        c["memsets"], c["ms"] = captured(lambda: launch(plan, a, b, out, i))
                    except (lt.CublasLtError, RuntimeError) as e:
                        c["error"] = str(e)[:200]
                    cands.append(c)
                r[preference] = cands
            rows.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
