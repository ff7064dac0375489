"""sprintc/cublaslt.py's MLP on the CPU, where its two ops compute with torch's own: the hand-written backward is the
expression's gradient, and torch.compile traces the MLP whole. (The cuBLASLt epilogues themselves: tests/test_cuda.py.)"""
import torch
import torch.nn.functional as F

from sprintc.cublaslt import gelu_mlp


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
