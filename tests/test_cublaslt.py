"""sprintc/cublaslt.py on the CPU, where its ops compute with torch's own: the MLP's hand-written backward is the
expression's gradient, and torch.compile traces the MLP whole; the tuned-matmul pass puts sprintc::tuned_mm where its
chooser picks a candidate, and the compiled model still gives eager's values. (cuBLASLt itself: tests/test_cuda.py.)"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sprintc import cublaslt
from sprintc.cublaslt import gelu_mlp, operand


def params(dtype, rows=37, width=24, hidden=96):
    g = torch.Generator().manual_seed(0)
    shapes = ((rows, width), (hidden, width), (hidden,), (width, hidden), (width,))
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def expression(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)


def test_the_mlps_backward_is_the_gradient_of_the_expression():
    assert torch.autograd.gradcheck(gelu_mlp, params(torch.float64))
    ps, qs = params(torch.float64), params(torch.float64)
    gy = torch.randn(37, 24, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(gelu_mlp(*ps), ps, gy), torch.autograd.grad(expression(*qs), qs, gy)):
        torch.testing.assert_close(got, want)


def test_the_mlp_compiles_whole_and_gives_eagers_gradients():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    fn = torch.compile(lambda *p: gelu_mlp(*p).square().sum(), fullgraph=True)
    ps, qs = params(torch.float32), params(torch.float32)
    fn(*ps).backward()
    expression(*qs).square().sum().backward()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
    assert not counters["graph_break"]


def test_operand_layouts():
    t = torch.empty(3, 5)
    assert operand(t) == (cublaslt._OP_N, 5, 3, 5)
    assert operand(t.t()) == (cublaslt._OP_T, 5, 3, 5)
    assert operand(t[:, :4]) is None  # a padded row is neither layout
    assert operand(torch.empty(4, 6)[::2]) is None


def test_replace_matmuls_swaps_only_the_chosen_products():
    from torch.fx.experimental.proxy_tensor import make_fx

    from sprintc.targets.inductor import replace_matmuls

    def f(x, w, b, g):
        return torch.addmm(b, x, w.t()), torch.mm(g.t(), x), torch.mm(x, w.t()) * 2

    args = (torch.randn(6, 4), torch.randn(5, 4), torch.randn(5), torch.randn(6, 5))
    gm = make_fx(f)(*args)
    seen = []

    def choose(a, b, bias):
        seen.append(bias is not None)
        return None if operand(a)[0] == cublaslt._OP_T else 3  # g.t() @ x stays torch's

    assert replace_matmuls(gm.graph, choose) == 2
    gm.recompile()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.sprintc.tuned_mm.default) == 2 and targets.count(torch.ops.aten.mm.default) == 1
    assert sorted(seen) == [False, False, True]
    for got, want in zip(gm(*args), f(*args)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("bias", [False, True])
def test_tuned_mm_on_the_cpu_is_torchs_product(bias):
    a, b, c = torch.randn(7, 3), torch.randn(5, 3), torch.randn(5)
    got = cublaslt.tuned_mm(a, b.t(), c if bias else None, 0)
    torch.testing.assert_close(got, a @ b.t() + (c if bias else 0))
    assert cublaslt.tune_mm(a, b.t(), None) is None  # nothing to tune off the GPU


def test_a_compiled_model_with_tuned_matmuls_gives_eagers_values(monkeypatch):
    """The pass as sprintc's compiles run it (KernelsInCacheKey with tuned matmuls), with a chooser that picks a
    candidate for every product: Inductor compiles the custom op in the forward and the backward, and the outputs and
    gradients are eager's."""
    from sprintc.targets.inductor import KernelsInCacheKey

    asked = []
    monkeypatch.setattr(cublaslt, "tune_mm", lambda a, b, bias: asked.append(bias is not None) or 0)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    compiled = torch.compile(model, fullgraph=True, options={
        "post_grad_custom_post_pass": KernelsInCacheKey(None, tuned_matmuls=True), "fx_graph_cache": False})
    x = torch.randn(4, 8, 16, requires_grad=True)
    with torch.profiler.profile() as prof:
        out = compiled(x)
        out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]
    model.zero_grad()
    x.grad = None
    want = model(x)
    want.sum().backward()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for got, ref in zip(grads, [p.grad for p in model.parameters()] + [x.grad]):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert sorted(asked) == [False] * 4 + [True] * 2  # two forward addmm, four backward mm
    assert any("tuned_mm" in e.key for e in prof.key_averages())
