"""cuBLASLt called directly (CUDA, bf16 / fp16): the GELU MLP's training step with fc1's bias and GELU in its epilogues,
and tuned matmuls (`tuned_mm`, `tune_mm`, at the end of this file).

Inductor runs the tanh GELU of `fc2(gelu(fc1(x)))` as passes of their own over the hidden activations (4x the width):
one after fc1's matmul in the forward, one after fc2's input-gradient matmul in the backward. cuBLASLt can do both
inside the matmuls, while the tile is in registers: GELU_AUX_BIAS writes gelu(x @ w1.T + b1) and, beside it, the
pre-activation the backward needs; DGELU multiplies fc2's input gradient by the GELU's derivative at that
pre-activation. ATen exposes neither (only `_addmm_activation`, which keeps no pre-activation), so this module calls
cuBLASLt itself, through ctypes on the library torch already loaded (no build step). For each shape it asks the
heuristic for candidate algorithms and keeps the fastest, timed at the first call (the first pick was up to 9% slower).
On one H100 this made the routed XL step at batch 128 2.6% faster (docs/PERFORMANCE.md, session R).

`gelu_mlp(x, w1, b1, w2, b2)` is that MLP for x (M, K), with its own backward. The two ops are torch custom ops with
fake kernels: torch.compile traces them as opaque calls (no graph break) and CUDA graphs capture them. On the CPU, and
for dtypes or shapes cuBLASLt does not take here, they compute the same thing with torch's own ops.
"""
from __future__ import annotations

import collections
import ctypes
import functools

import torch
import torch.nn.functional as F

# cublasLt.h (CUDA 12 and 13)
_OP_N, _OP_T = 0, 1
_CUDA_TYPE = {torch.float16: 2, torch.bfloat16: 14}
_R_32F, _COMPUTE_32F = 0, 68
_TRANSA, _TRANSB, _EPILOGUE, _BIAS_POINTER, _AUX_POINTER, _AUX_LD = 3, 4, 7, 8, 11, 12
DEFAULT, BIAS, GELU_AUX_BIAS, DGELU = 1, 4, 164, 192
_PREF_WORKSPACE, _PREF_ALIGN_A, _PREF_ALIGN_B, _PREF_ALIGN_C, _PREF_ALIGN_D = 1, 5, 6, 7, 8
WORKSPACE_BYTES = 32 << 20
# calls on CUDA half tensors that cuBLASLt did not take (no library, no algorithm for the shape or alignment, a refused
# launch), by op: they ran torch's ops instead, correct but without the fusion
fallbacks = collections.Counter()


class _Heuristic(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


class CublasLtError(RuntimeError):
    pass


@functools.cache
def _lib():
    """The libcublasLt that torch loaded (found in this process's memory map), else one by its usual names."""
    torch.cuda.init()
    with open("/proc/self/maps") as maps:
        paths = [line.split()[-1] for line in maps if "libcublasLt" in line]
    for name in paths[:1] + ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"]:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise CublasLtError("cuBLASLt: no libcublasLt in this process nor on the library path")
    p, i, u64, i64, sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64, ctypes.c_int64, ctypes.c_size_t
    pp = ctypes.POINTER(p)
    for name, args in {
        "cublasLtCreate": [pp],
        "cublasLtMatmulDescCreate": [pp, i, i],
        "cublasLtMatmulDescSetAttribute": [p, i, p, sz],
        "cublasLtMatrixLayoutCreate": [pp, i, u64, u64, i64],
        "cublasLtMatmulPreferenceCreate": [pp],
        "cublasLtMatmulPreferenceSetAttribute": [p, i, p, sz],
        "cublasLtMatmulAlgoGetHeuristic": [p, p, p, p, p, p, p, i, ctypes.POINTER(_Heuristic), ctypes.POINTER(i)],
        "cublasLtMatmul": [p, p, p, p, p, p, p, p, p, p, p, p, p, p, sz, p],
    }.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


def _check(status: int, what: str):
    if status != 0:
        raise CublasLtError(f"cuBLASLt: {what} returned status {status}")


def _create(fn, *args) -> ctypes.c_void_p:
    out = ctypes.c_void_p()
    _check(getattr(_lib(), fn)(ctypes.byref(out), *args), fn)
    return out


def _set(fn, obj, attr: int, value):
    _check(getattr(_lib(), fn)(obj, attr, ctypes.byref(value), ctypes.sizeof(value)), f"{fn}({attr})")


@functools.cache
def _handle(device: int) -> ctypes.c_void_p:
    with torch.cuda.device(device):
        return _create("cublasLtCreate")


def _alignment(t: torch.Tensor) -> int:
    address = t.data_ptr()
    return next(a for a in (256, 128, 64, 32, 16, 8, 4, 2, 1) if address % a == 0)


CANDIDATES = 8  # algorithms asked of cuBLASLt's heuristic per shape; the fastest on the card is kept (_matmul)


def operand(t: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(op, rows, cols, ld) of the column-major cuBLASLt operand that gives t.T: a row-major t (r, c) is t.T in
    column-major memory, and the .t() of one is t itself, transposed by the op. None for any other layout."""
    r, c = t.shape
    (sr, sc) = t.stride()
    if sc == 1 and (sr == c or r == 1):
        return _OP_N, c, r, c
    if sr == 1 and (sc == r or c == 1):
        return _OP_T, r, c, r
    return None


@functools.cache
def _plan(device: int, dtype: torch.dtype, epilogue: int, m: int, n: int, k: int, b_op: tuple, a_op: tuple,
          aligns: tuple):
    """Descriptors and candidate algorithms of out (m, n) = epilogue(a (m, k) @ b (k, n)), out row-major and contiguous,
    a and b given by operand(). In cuBLASLt's column-major terms: out.T (n, m) = b.T @ a.T. None where cuBLASLt has no
    algorithm for it."""
    t = _CUDA_TYPE[dtype]
    desc = _create("cublasLtMatmulDescCreate", _COMPUTE_32F, _R_32F)
    _set("cublasLtMatmulDescSetAttribute", desc, _TRANSA, ctypes.c_int(b_op[0]))
    _set("cublasLtMatmulDescSetAttribute", desc, _TRANSB, ctypes.c_int(a_op[0]))
    _set("cublasLtMatmulDescSetAttribute", desc, _EPILOGUE, ctypes.c_uint32(epilogue))
    _set("cublasLtMatmulDescSetAttribute", desc, _AUX_LD, ctypes.c_int64(n))
    a = _create("cublasLtMatrixLayoutCreate", t, *b_op[1:])
    b = _create("cublasLtMatrixLayoutCreate", t, *a_op[1:])
    d = _create("cublasLtMatrixLayoutCreate", t, n, m, n)
    pref = _create("cublasLtMatmulPreferenceCreate")
    _set("cublasLtMatmulPreferenceSetAttribute", pref, _PREF_WORKSPACE, ctypes.c_uint64(WORKSPACE_BYTES))
    for attr, align in zip((_PREF_ALIGN_A, _PREF_ALIGN_B, _PREF_ALIGN_C, _PREF_ALIGN_D), aligns):
        _set("cublasLtMatmulPreferenceSetAttribute", pref, attr, ctypes.c_uint32(align))
    found, count = (_Heuristic * CANDIDATES)(), ctypes.c_int(0)
    status = _lib().cublasLtMatmulAlgoGetHeuristic(_handle(device), desc, a, b, d, d, pref, CANDIDATES, found,
                                                   ctypes.byref(count))
    if status != 0 or count.value < 1:
        return None
    return desc, a, b, d, list(found[:count.value])


_ONE, _ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)
_chosen: dict = {}  # plan's key -> index of its fastest candidate, timed at the first call outside a CUDA graph capture


def _launch(plan, device, a, b, out, candidate: int):
    desc, la, lb, ld, found = plan
    h = found[candidate]
    space = torch.empty(max(h.workspace, 1), device=device, dtype=torch.uint8)
    _check(_lib().cublasLtMatmul(_handle(device.index), desc, ctypes.byref(_ONE), b.data_ptr(), la, a.data_ptr(), lb,
                                 ctypes.byref(_ZERO), out.data_ptr(), ld, out.data_ptr(), ld, ctypes.byref(h.algo),
                                 space.data_ptr(), h.workspace, torch.cuda.current_stream(device).cuda_stream),
           "cublasLtMatmul")


def time_ms(fn, reps: int = 10, groups: int = 3) -> float:
    """Milliseconds per call of fn on the current CUDA stream: one warm-up call, then the median of `groups` groups of
    `reps` calls."""
    fn()
    times = []
    for _ in range(groups):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return sorted(times)[groups // 2]


def _candidate_times(launch, count: int, reps: int) -> dict[int, float]:
    """ms per call of launch(i) for each candidate i < count, leaving out those cuBLASLt refuses (a refusal is returned
    at the first call, before anything runs; every launch writes the same values)."""
    times = {}
    for i in range(count):
        try:
            times[i] = time_ms(lambda: launch(i), reps=reps)
        except CublasLtError:
            pass
    return times


def _fastest(plan, device, a, b, out):
    """The fastest candidate (the heuristic's first pick is not always the fastest); None if cuBLASLt refuses all."""
    times = _candidate_times(lambda i: _launch(plan, device, a, b, out, i), len(plan[4]), reps=3)
    return min(times, key=times.get) if times else None


def _key(epilogue: int, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor):
    a_op, b_op = operand(a), operand(b)
    if a_op is None or b_op is None:
        return None
    o = _alignment(out)  # (C and D: the same tensor)
    return (a.device.index, a.dtype, epilogue, a.shape[0], b.shape[1], a.shape[1], b_op, a_op,
            (_alignment(b), _alignment(a), o, o))


def _matmul(epilogue: int, a: torch.Tensor, b: torch.Tensor, bias, aux, candidate: int | None = None):
    """epilogue(a @ b) with its bias (n,) and aux (m, n) tensors (None where the epilogue has none), for a and b
    each row-major or the .t() of a row-major tensor; None where no plan fits. `candidate` picks one of the heuristic's
    algorithms (a tuned choice); by default the fastest, timed at the first call."""
    out = torch.empty(a.shape[0], b.shape[1], device=a.device, dtype=a.dtype)
    key = _key(epilogue, a, b, out)
    plan = None if key is None else _plan(*key)
    if plan is None:
        return None
    if bias is not None:  # (a bias pointer on an epilogue without one is an invalid value)
        _set("cublasLtMatmulDescSetAttribute", plan[0], _BIAS_POINTER, ctypes.c_void_p(bias.data_ptr()))
    if aux is not None:
        _set("cublasLtMatmulDescSetAttribute", plan[0], _AUX_POINTER, ctypes.c_void_p(aux.data_ptr()))
    if candidate is None:
        if key not in _chosen and not torch.cuda.is_current_stream_capturing():
            _chosen[key] = _fastest(plan, a.device, a, b, out)
        candidate = _chosen.get(key, 0)  # (a shape first met inside a capture takes the heuristic's first pick)
        if candidate is None:
            return None
    if candidate >= len(plan[4]):
        return None
    _launch(plan, a.device, a, b, out, candidate)
    return out


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy of it at a fresh (256-byte aligned) address where its own is not 16-byte aligned: the epilogues'
    bias and aux pointers have no alignment preference to tell the heuristic."""
    return t if _alignment(t) >= 16 else t.clone()


def _try(*args):
    """_matmul(*args), or None where cuBLASLt is missing or refuses it (a status, returned before anything runs)."""
    try:
        return _matmul(*args)
    except CublasLtError:
        return None


def _on_cublaslt(*ts: torch.Tensor) -> bool:
    return ts[0].is_cuda and ts[0].dtype in _CUDA_TYPE and all(t.dtype == ts[0].dtype for t in ts)


@torch.library.custom_op("sprintc::linear_gelu_aux", mutates_args=())
def linear_gelu_aux(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gelu_tanh(h), h) where h = x @ w.T + b, for x (M, K), w (N, K), b (N,)."""
    if _on_cublaslt(x, w, b):
        x, w, b = x.contiguous(), w.contiguous(), _aligned(b.contiguous())
        h = torch.empty(x.shape[0], w.shape[0], device=x.device, dtype=x.dtype)
        a = _try(GELU_AUX_BIAS, x, w.t(), b, h)
        if a is not None:
            return a, h
        fallbacks["linear_gelu_aux"] += 1
    h = F.linear(x, w, b)
    return F.gelu(h, approximate="tanh"), h


@linear_gelu_aux.register_fake
def _(x, w, b):
    return x.new_empty(x.shape[0], w.shape[0]), x.new_empty(x.shape[0], w.shape[0])


@torch.library.custom_op("sprintc::matmul_dgelu", mutates_args=())
def matmul_dgelu(g: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(g @ w) * gelu_tanh'(h) for g (M, C), w (C, N), h (M, N): the gradient of gelu_tanh(h) @ w.T at h."""
    if _on_cublaslt(g, w, h):
        g, w, h = g.contiguous(), w.contiguous(), _aligned(h.contiguous())
        dh = _try(DGELU, g, w, None, h)
        if dh is not None:
            return dh
        fallbacks["matmul_dgelu"] += 1
    return torch.ops.aten.gelu_backward(g @ w, h, approximate="tanh")


@matmul_dgelu.register_fake
def _(g, w, h):
    return h.new_empty(h.shape)


class _GeluMlp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        a, h = linear_gelu_aux(x, w1, b1)
        ctx.save_for_backward(x, w1, w2, a, h)
        return F.linear(a, w2, b2)

    @staticmethod
    def backward(ctx, gy):
        x, w1, w2, a, h = ctx.saved_tensors
        dh = matmul_dgelu(gy, w2, h)
        # the bias gradient is Inductor's sum: DGELU_BGRAD's own took 3x DGELU's time (docs/PERFORMANCE.md, session R)
        return dh @ w1, dh.t() @ x, dh.sum(0), gy.t() @ a, gy.sum(0)


def gelu_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """fc2(gelu_tanh(fc1(x))) for x (M, K), the weights and biases in x's dtype; differentiable in all five."""
    return _GeluMlp.apply(x, w1, b1, w2, b2)


# Tuned matmuls. Inductor calls torch's mm / addmm for every matmul it does not fuse, and cuBLAS picks their
# algorithm by its heuristic, which at some of a DiT's shapes takes up to 1.6x the time of another of cuBLASLt's
# candidates (the 256-token out-projection's forward at batch 128 on an H100: docs/PERFORMANCE.md, session U). At
# compile time, sprintc's post-grad pass (targets/inductor.py) asks `tune_mm` about each one and, where a candidate
# beats torch's call by TUNE_MARGIN, puts `tuned_mm` with that candidate's index in its place; the graph, with the
# index, goes to Inductor's cache.
TUNE_MARGIN = 0.97  # a candidate must take at most this fraction of torch's time (a smaller gain is timing noise)
_tuned: dict = {}  # (device, dtype, shapes, strides, bias) -> candidate index or None, per process


@torch.library.custom_op("sprintc::tuned_mm", mutates_args=())
def tuned_mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, candidate: int) -> torch.Tensor:
    """a @ b (+ bias (n,)) by cuBLASLt's heuristic candidate `candidate`; torch's mm / addmm wherever that candidate
    does not apply (the CPU, another layout or alignment than at tuning, a refusal)."""
    if _on_cublaslt(a, b, *([] if bias is None else [bias])):
        epilogue, bias = (DEFAULT, None) if bias is None else (BIAS, _aligned(bias))
        out = _try(epilogue, a, b, bias, None, candidate)
        if out is not None:
            return out
        fallbacks["tuned_mm"] += 1
    return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)


@tuned_mm.register_fake
def _(a, b, bias, candidate):
    return a.new_empty(a.shape[0], b.shape[1])


def _like(t: torch.Tensor) -> torch.Tensor:
    """A real tensor of t's shape and layout (row-major or the .t() of a row-major one) with random values."""
    r, c = t.shape
    real = torch.randn(c, r, device=t.device, dtype=t.dtype).t() if operand(t)[0] == _OP_T else \
        torch.randn(r, c, device=t.device, dtype=t.dtype)
    return real * 0.1


def tune_mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> int | None:
    """For a @ b (+ bias) with a and b as given (at compile time fake tensors, of which only the shapes, layouts, dtype
    and device are used): the index of the cuBLASLt candidate that beats torch's mm / addmm by TUNE_MARGIN on this
    GPU, timed on random data. None where none does, cuBLASLt does not take the product, or the GPU has no room for the
    random operands at that moment (the compile goes on with torch's call)."""
    if not (_on_cublaslt(a, b) and a.dim() == b.dim() == 2 and operand(a) and operand(b)):
        return None
    if torch.cuda.is_current_stream_capturing():  # (a compile inside a capture: no timing there)
        return None
    if bias is not None and (bias.dtype != a.dtype or tuple(bias.shape) != (b.shape[1],)):
        return None
    key = (a.device, a.dtype, tuple(a.shape), a.stride(), tuple(b.shape), b.stride(), bias is not None)
    if key not in _tuned:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        with unset_fake_temporarily(), torch.cuda.device(a.device):
            try:
                _tuned[key] = _time_candidates(a, b, bias)
            except (CublasLtError, torch.cuda.OutOfMemoryError):  # no cuBLASLt, or no room for the operands now
                _tuned[key] = None
    return _tuned[key]


def _time_candidates(a, b, bias) -> int | None:
    ra, rb = _like(a), _like(b)
    rbias = None if bias is None else torch.randn(b.shape[1], device=a.device, dtype=a.dtype)
    epilogue = DEFAULT if bias is None else BIAS
    plan = _plan(*_key(epilogue, ra, rb, torch.empty(1, device=a.device, dtype=a.dtype)))
    base = time_ms(lambda: torch.mm(ra, rb) if rbias is None else torch.addmm(rbias, ra, rb))
    times = _candidate_times(lambda i: _matmul(epilogue, ra, rb, rbias, None, i), len(plan[4]) if plan else 0, reps=10)
    best = min(times, key=times.get) if times else None
    return best if best is not None and times[best] <= TUNE_MARGIN * base else None
