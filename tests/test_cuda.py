"""What only a GPU can check; skipped on the CPU. Run on the device with `python -m pytest tests/test_cuda.py`."""
import copy

import pytest
import torch

from test_train import spec
from sprintc.model import Attention, rope_angles
from sprintc.targets_api import lower

use_kernels = pytest.importorskip("sprintc.kernels").use_kernels if torch.cuda.is_available() else None
from sprintc.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_training_equals_plain_steps(tmp_path, dtype):
    """The captured step (warm-up, capture, replays, a recapture for the second stage) gives the losses of
    the plain steps: the draws are made outside the graph and the lr warm-up is read from the device."""
    runs = {}
    for graphs in (False, True):
        s = spec(stages=((8, 8, True), (6, 4, False)), checkpoint_every=5)
        s["target"] = {"name": "eager", "dtype": dtype, "cuda_graphs": graphs}
        runs[graphs] = train(s, tmp_path / str(graphs), device="cuda", progress=False)
    a, b = runs[False]["losses"], runs[True]["losses"]
    assert len(a) == len(b) == 14
    tol = 1e-4 if dtype == "float32" else 2e-2
    assert all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)


def test_compiled_attention_bf16_close_to_float32():
    torch.manual_seed(0)
    attn = Attention(128, 2, "rms").cuda()
    x = torch.randn(4, 64, 128, device="cuda")
    rope = rope_angles((8, 8), 64).cuda()
    ref = attn(x, rope)
    fast = torch.compile(attn, fullgraph=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = fast(x, rope).float()
    assert (out - ref).norm() / ref.norm() < 2e-2


@pytest.mark.parametrize("rope_kind", ["shared", "routed"])
def test_kernel_attention_matches_inductors_code(rope_kind):
    """q/k RMSNorm + RoPE from sprintc's Triton kernel (inside fullgraph compile) against Inductor's code for the
    expression: outputs and gradients (input, norm weights), float32 and bf16 autocast, XL's head width 72."""
    torch.manual_seed(0)
    ref = Attention(144, 2, "rms").cuda()
    for w in (ref.q_norm.weight, ref.k_norm.weight):
        w.data.uniform_(0.5, 1.5)
    fused = copy.deepcopy(ref)
    assert use_kernels(fused) == 1
    table = rope_angles((8, 8), 72).cuda()
    rope = table if rope_kind == "shared" else table[torch.stack([torch.randperm(64, device="cuda")[:16] for _ in range(4)])]
    x = torch.randn(4, rope.shape[-2], 144, device="cuda")
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        res = []
        for attn in (ref, fused):
            xi = x.clone().requires_grad_()
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                out = torch.compile(attn, fullgraph=True)(xi, rope).float()
            gx, gq, gk = torch.autograd.grad(out.pow(2).sum(), (xi, attn.q_norm.weight, attn.k_norm.weight))
            res.append((out, gx, gq, gk))
        for name, a, b in zip(("out", "dx", "dwq", "dwk"), *res):
            assert (a - b).norm() / b.norm() < tol, (dtype, name, ((a - b).norm() / b.norm()).item())


def test_inductor_target_uses_the_kernel_and_matches_eager():
    """The inductor target on CUDA routes the attentions through the kernel; a routed training forward and
    backward of a small SPRINT model (XL's head width 72) then gives eager's output and gradients (float32)."""
    from test_targets import small

    built = small(model__width=144, model__heads=2)
    ref = lower(copy.deepcopy(built.model).cuda(), {"name": "eager", "dtype": "float32"}, device="cuda").train()
    model = lower(built.model.cuda(), {"name": "inductor", "dtype": "float32"}, device="cuda").train()
    assert all(blk.attn.fused_qk for blk in model.blocks) and not any(blk.attn.fused_qk for blk in ref.blocks)
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, generator=g), torch.randint(0, 10, (2,), generator=g)
    ids = torch.tensor([[0, 3, 9, 14], [5, 6, 8, 15]])
    results = []
    for m in (model, ref):
        out = m(x.cuda(), t.cuda(), y.cuda(), ids_keep=ids.cuda(), path_drop=torch.tensor([False, False], device="cuda"))
        out.square().mean().backward()
        results.append((out, [p.grad for p in m.parameters()]))
    (out, grads), (want, wgrads) = results
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, wgrads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
