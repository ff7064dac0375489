"""What only a GPU can check; skipped on the CPU. Run on the device with `python -m pytest tests/test_cuda.py`."""
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from test_train import spec
from sprintc.model import Attention, rope_angles
from sprintc.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_training_equals_plain_steps(tmp_path, dtype):
    """The captured step (warm-up, capture, replays, a recapture for the second stage) gives the losses of
    the plain steps: the draws are made outside the graph and the lr warm-up is read from the device; its EMA
    ends as the plain steps' one."""
    runs = {}
    for graphs in (False, True):
        s = spec(stages=((8, 8, True), (6, 4, False)), checkpoint_every=5)
        s["target"] = {"name": "eager", "dtype": dtype, "cuda_graphs": graphs}
        runs[graphs] = train(s, tmp_path / str(graphs), device="cuda", progress=False)
    a, b = runs[False]["losses"], runs[True]["losses"]
    assert len(a) == len(b) == 14
    events = (tmp_path / "True" / "metrics.jsonl").read_text()
    assert "cuda_graph_fallback" not in events  # each stage's step was captured, not run plainly after a failure
    tol = 1e-4 if dtype == "float32" else 2e-2
    assert all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)
    emas = [load_file(f"{runs[g]['checkpoint']}/ema.safetensors") for g in (False, True)]
    assert emas[0].keys() == emas[1].keys()
    for k in emas[0]:
        torch.testing.assert_close(emas[1][k], emas[0][k], rtol=tol, atol=tol, msg=k)


def test_after_a_failed_capture_the_random_generators_draw_as_before():
    """A step that syncs with the host cannot be captured: CudaGraphStep says so (CaptureError), and the default
    generator and the step's own go on from their seed and offset, as the plain steps after a failed capture need."""
    from sprintc.targets_api import CaptureError, CudaGraphStep

    gen = torch.Generator("cuda").manual_seed(1)

    def step(b):
        noise = torch.randn(4, device="cuda") + torch.rand(4, device="cuda", generator=gen)
        return (b["x"] * noise).sum().item()  # a host sync: no capture

    step_ = CudaGraphStep(step, warmup=1, generators=[gen])
    step_({"x": torch.ones(4, device="cuda")})  # the warm-up, plain
    torch.manual_seed(0)
    mine = gen.get_state()
    with pytest.raises(CaptureError, match="capture of the step failed"):
        step_({"x": torch.ones(4, device="cuda")})
    after = torch.randn(8, device="cuda"), torch.rand(8, device="cuda", generator=gen)
    torch.manual_seed(0)
    gen.set_state(mine)
    again = torch.randn(8, device="cuda"), torch.rand(8, device="cuda", generator=gen)
    for a, b in zip(after, again):
        assert torch.equal(a, b)


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


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("target, dtype", [("eager", "float32"), ("inductor", "float32"), ("inductor", "bfloat16")])
def test_ddp_cuda_graph_training_equals_plain_steps(tmp_path, target, dtype):
    """DDP on 2 GPUs: the captured step (11 warm-up steps, capture with the all-reduces inside, replays, a
    recapture for the second stage) gives the losses of the plain DDP steps; in bf16 with the inductor target each
    rank's MLPs run cuBLASLt's epilogues (sprintc/cublaslt.py)."""
    import json

    import yaml
    from test_distributed import torchrun

    runs = {}
    for graphs in (False, True):
        s = spec(stages=((16, 8, True), (14, 4, False)), checkpoint_every=100)
        s["train"]["distributed"] = "ddp"
        s["target"] = {"name": target, "dtype": dtype, "cuda_graphs": graphs}
        f = tmp_path / f"{graphs}.yaml"
        yaml.safe_dump(s, f.open("w"))
        r = torchrun(f, tmp_path / str(graphs), device="cuda")
        assert "failed" not in r.stdout + r.stderr
        runs[graphs] = [json.loads(line)["loss_last"] for line in open(tmp_path / str(graphs) / "metrics.jsonl")
                        if '"loss_last"' in line]
    a, b = runs[False], runs[True]
    tol = 1e-4 if dtype == "float32" else 2e-2
    assert len(a) == len(b) == 30
    assert all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)


@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_a_training_batch_reaches_the_gpu_without_a_host_sync(where):
    """The sample indices come from the host each step: a blocking copy would make the host wait for the steps
    queued on the GPU, and the GPU then wait for the host to prepare the next one."""
    from sprintc.data import Data

    data = Data(torch.randn(64, 1, 8, 8), torch.arange(64) % 10, "test").to(where)
    idx = torch.randperm(64)[:16]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x, y = data.batch(idx, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert x.is_cuda and y.is_cuda
    assert torch.equal(x.cpu(), data.x[idx.to(where)].float().cpu()) and torch.equal(y.cpu(), (idx % 10))


def test_a_steps_loss_is_read_without_waiting_for_the_work_queued_after_it():
    """`sprintc train` reads step s-1's loss while step s runs. The read must wait for step s-1 only: a read that
    waited for step s too would leave the GPU idle while the host prepares step s+1."""
    from sprintc.train import read_later

    loss = torch.tensor([3.0, 0.0], device="cuda")
    flags, copied = read_later(loss)
    torch.cuda._sleep(1_000_000_000)  # the next step: about half a second of GPU time queued behind the copy
    copied.synchronize()
    assert not torch.cuda.current_stream().query(), "the read waited for the work queued after it"
    assert flags.tolist() == [3.0, 0.0] and flags.is_pinned()
    torch.cuda.synchronize()


def xl_attention(B, N, kept):
    """XL's attention (16 heads of 72, RMS q/k norms with weights away from 1) and RoPE's table for N tokens, or for
    `kept` of them drawn per sample (the routed blocks' table)."""
    H, DH = 16, 72
    attn = Attention(H * DH, H, "rms").cuda()
    for w in (attn.q_norm.weight, attn.k_norm.weight):
        w.data.uniform_(0.5, 1.5)
    side = int(N ** 0.5)
    rope = rope_angles((side, side), DH).cuda()
    if kept:
        rope = rope[torch.stack([torch.randperm(N)[:kept] for _ in range(B)]).cuda()]
    return attn, rope, H, DH


@pytest.mark.parametrize("tiles", [None, "4,4,1,4,1,3", "4,4,2,8,1,2"])
@pytest.mark.parametrize("routed", [False, True])
def test_qk_kernels_at_the_xl_head_shape_match_the_expression(monkeypatch, routed, tiles):
    """sprintc/kernels.py compiled for the GPU, XL's 16 heads of 72, bf16 as under autocast; with the default tiles and
    with one backward program per SM whose loads are pipelined over 3 or 2 tiles (SPRINTC_QK_BLOCKS), each program
    looping over about four tiles of one token or two of two tokens (512 tokens, 132 SMs on an H100)."""
    pytest.importorskip("triton")
    from sprintc.kernels import qk_norm_rope

    if tiles:
        monkeypatch.setenv("SPRINTC_QK_BLOCKS", tiles)
    torch.manual_seed(0)
    B, N = (32 if routed else 8), 64  # 512 tokens either way
    attn, rope, H, DH = xl_attention(B, N, N // 4 if routed else 0)
    M = rope.shape[-2]
    qkv = torch.randn(B, M, 3 * H * DH, device="cuda").bfloat16().requires_grad_()

    ref = attn.split_heads(qkv, rope)  # Attention.forward's unfused branch
    out = qk_norm_rope(qkv, attn.q_norm.weight, attn.k_norm.weight, rope, attn.q_norm.eps)
    grads = [torch.randn_like(o) for o in out]
    wrt = (qkv, attn.q_norm.weight, attn.k_norm.weight)
    want = torch.autograd.grad(ref, wrt, grads)
    got = torch.autograd.grad(out, wrt, grads)
    for a, b in zip(out + got, ref + want):
        assert (a.float() - b.float()).norm() / b.float().norm() < 1e-2


@pytest.mark.parametrize("rope_kind", ["routed", "none"])
def test_qkv_attention_at_the_xl_head_shape_matches_the_expression(rope_kind):
    """The routed blocks' attention (q/k norm + RoPE, then attention over v read from qkv, dv written into dqkv),
    compiled for the GPU at XL's 16 heads of 72 and 64 kept tokens, bf16, against the model's expression in float32."""
    pytest.importorskip("triton")
    from sprintc.kernels import qkv_attention

    torch.manual_seed(0)
    B, N = 16, 64
    attn, rope, H, DH = xl_attention(B, 256, N)
    rope = rope if rope_kind == "routed" else None
    qkv = torch.randn(B, N, 3 * H * DH, device="cuda").bfloat16().requires_grad_()
    ref = torch.nn.functional.scaled_dot_product_attention(*attn.split_heads(qkv.float(), rope))
    out = qkv_attention(qkv, attn.q_norm.weight, attn.k_norm.weight, rope, attn.q_norm.eps)[0]
    g = torch.randn_like(ref)
    wrt = (qkv, attn.q_norm.weight, attn.k_norm.weight)
    want = torch.autograd.grad(ref, wrt, g)
    got = torch.autograd.grad(out, wrt, g.bfloat16())
    for a, b in zip([out, *got], [ref, *want]):
        assert (a.float() - b).norm() / b.norm() < 1e-2


@pytest.mark.parametrize("tokens, dtype", [(64, torch.bfloat16), (13, torch.bfloat16), (64, torch.float16)])
def test_short_attention_at_the_xl_head_shape_matches_sdpa(tokens, dtype):
    """sprintc's attention for the routed blocks (64 kept tokens of XL's 16 heads of 72), bf16 or fp16 (the dtypes the
    model sends it), against SDPA in float32; from q, k, v in token-major memory (the q/k kernel's) and from views of
    one qkv tensor."""
    pytest.importorskip("triton")
    from sprintc.kernels import short_attention

    torch.manual_seed(0)
    B, H, DH = 32, 16, 72
    qkv = torch.randn(B, tokens, 3, H, DH, device="cuda").to(dtype).requires_grad_()
    for q, k, v in (qkv.permute(2, 0, 3, 1, 4), [t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
                                                 for t in qkv.permute(2, 0, 3, 1, 4)]):
        leaves = [qkv] if q.requires_grad and not q.is_leaf else [q, k, v]
        ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
        out = short_attention(q, k, v)
        g = torch.randn_like(ref)
        want = torch.autograd.grad(ref, leaves, g)
        got = torch.autograd.grad(out, leaves, g.to(dtype))
        for a, b in zip([out, *got], [ref, *want]):
            assert (a.float() - b).norm() / b.norm() < 1e-2


@pytest.mark.parametrize("dtype, qk_norm", [("float32", "rms"), ("bfloat16", "rms"), ("bfloat16", "none")])
def test_inductor_with_qk_kernels_equals_eager(dtype, qk_norm):
    """target.kernels: the compiled SiT blocks' q/k norm + RoPE and (in bf16) their attention over 16 and 4 tokens run
    as sprintc's kernels, without a graph break inside blocks (they compile with fullgraph): in a forward without
    gradients (sampling) and in the routed training step, the outputs, loss and gradients are eager's. Without q/k
    norms (DiT) the attention kernel gets views of the qkv projection."""
    pytest.importorskip("triton")
    import copy

    from torch._dynamo.utils import counters

    from sprintc.targets_api import lower
    from test_targets import inputs, small

    torch._dynamo.reset()
    counters.clear()
    built = small(model__qk_norm=qk_norm)  # tiny SiT: RoPE, weights drawn so that nothing is zero
    ref = copy.deepcopy(built.model).cuda()
    model = lower(built.model, {"name": "inductor", "dtype": dtype, "kernels": True}, device="cuda")
    assert all(b.attn.fused_qk == (qk_norm == "rms") and b.attn.short_tokens == 64 for b in model.blocks)
    assert all(b.mlp.gelu_train for b in model.blocks)  # bf16: its MLPs' training step through sprintc/cublaslt.py
    x, t, y = (a.cuda() for a in inputs(batch=4))
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(16, generator=g)[:4] for _ in range(4)]).cuda()
    pd = torch.tensor([False, True, False, False]).cuda()
    tol = 1e-4 if dtype == "float32" else 3e-2
    bf16 = dtype == "bfloat16"

    model.eval(), ref.eval()
    with torch.no_grad():
        out = model(x, t, y).float()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            want = ref(x, t, y).float()
    assert (out - want).norm() / want.norm() < tol

    def step(m, autocast):
        m.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = m(x, t, y, ids_keep=ids, path_drop=pd).float().square().mean()
        loss.backward()
        return loss, [p.grad for p in m.parameters()]

    model.train(), ref.train()
    loss, grads = step(model, False)  # the lowering casts itself
    want, wgrads = step(ref, bf16)
    assert abs(loss.item() - want.item()) <= tol * abs(want.item())
    num = sum((a.float() - b.float()).norm() ** 2 for a, b in zip(grads, wgrads)) ** 0.5
    den = sum(b.float().norm() ** 2 for b in wgrads) ** 0.5
    assert num / den < tol * 10
    assert not counters["graph_break"]


def test_the_kernels_write_their_outputs_without_copies():
    """Inductor runs sprintc's kernels on the buffers they write: no output is cloned before a kernel writes it (a
    clone of an uninitialised buffer is a whole pass over the tensor). torch 2.11 merged identical empty_strided
    allocations of one graph into one buffer and then copied it once per kernel; sprintc allocates with torch.empty."""
    pytest.importorskip("triton")
    from torch._dynamo.utils import ReinplaceCounters, counters

    from sprintc.targets_api import lower
    from test_targets import inputs, small

    torch._dynamo.reset()
    counters.clear()
    ReinplaceCounters.clear()
    model = lower(small().model, {"name": "inductor", "dtype": "bfloat16", "kernels": True}, device="cuda")
    assert all(b.attn.fused_qk and b.attn.short_tokens == 64 for b in model.blocks)
    x, t, y = (a.cuda() for a in inputs(batch=4))
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(16, generator=g)[:4] for _ in range(4)]).cuda()
    model.train()
    model(x, t, y, ids_keep=ids).float().square().mean().backward()
    model.eval()
    with torch.no_grad():
        model(x, t, y)
    assert counters["stats"]["unique_graphs"] > 0  # the regions were compiled (the counters below are Inductor's)
    assert ReinplaceCounters.get_total_missed() == 0, dict(ReinplaceCounters._values)


@pytest.mark.parametrize("epilogue", ["1", "sample", "0"])
def test_sampling_with_the_gelu_epilogue_equals_eager(monkeypatch, epilogue):
    """Where no gradient is taken, the inductor target runs the MLP's fc1 bias and GELU in cuBLASLt's epilogue
    (SPRINTC_GELU_EPILOGUE=0 keeps Inductor's own pass): the bf16 inference model's forward and PDG graph give eager's
    outputs, without graph breaks, and a training step of the lowered model takes a path with a backward."""
    from torch._dynamo.utils import counters

    from sprintc.targets_api import prepare_inference
    from test_targets import guidance_inputs, inputs, small

    monkeypatch.setenv("SPRINTC_GELU_EPILOGUE", epilogue)
    torch._dynamo.reset()
    counters.clear()
    built = small()
    ref = prepare_inference(built.model, {"name": "eager", "dtype": "bfloat16"}, device="cuda")
    net = prepare_inference(built.model, {"name": "inductor", "dtype": "bfloat16", "kernels": True}, device="cuda")
    assert all(b.mlp.gelu_epilogue == (epilogue != "0") for b in net.blocks)
    assert not any(b.mlp.gelu_epilogue for b in ref.blocks)
    x, t, y = (a.cuda() for a in inputs(batch=4))
    with torch.no_grad():
        pairs = [(net(x, t, y), ref(x, t, y)),
                 (net.forward_guidance(*guidance_inputs(x, t, y)), ref.forward_guidance(*guidance_inputs(x, t, y)))]
    for got, want in pairs:
        assert (got.float() - want.float()).norm() / want.float().norm() < 2e-2
    assert not counters["graph_break"]

    from sprintc.targets_api import lower

    model = lower(small().model, {"name": "inductor", "dtype": "bfloat16", "kernels": True}, device="cuda")
    loss = model(x, t, y).float().square().mean()
    loss.backward()  # _addmm_activation has no backward: this fails if training took that op
    assert all(p.grad is not None for p in model.blocks[0].mlp.parameters())


@pytest.mark.parametrize("rows, dtype, offset", [(2048, torch.bfloat16, 0), (300, torch.bfloat16, 0),
                                                (256, torch.float16, 0), (2048, torch.bfloat16, 1)])
def test_the_mlp_with_cublaslt_gelu_epilogues_matches_the_expression(rows, dtype, offset):
    """gelu_mlp (fc1's bias and GELU in cuBLASLt's GELU_AUX_BIAS epilogue, the backward's GELU derivative in DGELU's)
    gives the float32 expression's output and five gradients at XL's widths, with cuBLASLt taking every call, also
    where fc1's bias starts `offset` elements into its storage (an address the epilogue cannot take as it is)."""
    import torch.nn.functional as F

    from sprintc import cublaslt

    cublaslt.fallbacks.clear()
    g = torch.Generator(device="cuda").manual_seed(0)
    shapes = ((rows, 1152, 1.0), (4608, 1152, 1152 ** -0.5), (4608, 0.1), (1152, 4608, 4608 ** -0.5), (1152, 0.1))
    ps32 = [(torch.randn(*s[:-1], device="cuda", generator=g) * s[-1]).requires_grad_() for s in shapes]
    ps = [p.detach().to(dtype).requires_grad_() for p in ps32]
    if offset:
        ps[2] = torch.cat([ps[2].detach()[:offset], ps[2].detach()])[offset:].requires_grad_()
        assert ps[2].data_ptr() % 16
    gy = torch.randn(rows, 1152, device="cuda", generator=g)
    want = F.linear(F.gelu(F.linear(*ps32[:3]), approximate="tanh"), *ps32[3:])
    want.backward(gy)
    got = cublaslt.gelu_mlp(*ps)
    got.backward(gy.to(dtype))
    for a, b in zip([got] + [p.grad for p in ps], [want] + [p.grad for p in ps32]):
        assert a.dtype == dtype and a.shape == b.shape
        assert ((a.float() - b).norm() / b.norm()).item() < 2e-2
    assert not cublaslt.fallbacks


@pytest.mark.parametrize("rows, persistent", [("2048", True), ("0", False)])
def test_layer_norms_of_xls_width_are_persistent_reductions(monkeypatch, rows, persistent):
    """In sprintc's compiles Inductor holds rows of up to 2048 elements in registers (its own limit is 1024): the
    LayerNorm + modulate of XL's 1152-wide tokens compiles to a persistent reduction, which reads the row once, even
    after other compiles in this process; a looped one with SPRINTC_PERSISTENT_ROWS=0; both give eager's output."""
    from torch._inductor.utils import run_and_get_code

    from sprintc.model import modulate
    from sprintc.spec import TargetSpec
    from sprintc.targets.inductor import _options, patch_persistent_reductions

    monkeypatch.setenv("SPRINTC_PERSISTENT_ROWS", rows)
    torch._dynamo.reset()
    patch_persistent_reductions()

    def f(x, shift, scale):
        return modulate(torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6), shift, scale).to(torch.bfloat16)

    x, shift, scale = torch.randn(8, 256, 1152, device="cuda"), torch.randn(8, 1152, device="cuda"), torch.randn(8, 1152, device="cuda")
    torch.compile(lambda a: torch.nn.functional.layer_norm(a, a.shape[-1:]))(x)  # Inductor's heuristics in use first
    out, code = run_and_get_code(torch.compile(f, **_options(TargetSpec())), x, shift, scale)
    want = f(x, shift, scale).float()
    assert (out.float() - want).norm() / want.norm() < 1e-2
    assert ("@triton_heuristics.persistent_reduction" in "\n".join(code)) == persistent


@pytest.mark.parametrize("looped", ["1", "0"])
def test_sums_over_a_routed_blocks_tokens_loop(monkeypatch, looped):
    """The modulation's gradients sum a routed block's 64 tokens per sample and channel, 1152 elements apart: in
    sprintc's compiles a looped reduction (Inductor's own choice, persistent, with SPRINTC_LOOPED_SUMS=0); a LayerNorm's
    rows stay persistent either way; both give eager's sums."""
    from torch._inductor.utils import run_and_get_code

    from sprintc.spec import TargetSpec
    from sprintc.targets.inductor import _options, patch_persistent_reductions

    monkeypatch.setenv("SPRINTC_LOOPED_SUMS", looped)
    torch._dynamo.reset()
    patch_persistent_reductions()

    def sums(dy, x):
        xhat = torch.nn.functional.layer_norm(x.float(), x.shape[-1:], eps=1e-6)
        return torch.cat([dy.float().sum(1), (dy.float() * xhat).sum(1)], -1).bfloat16()

    def norm(x):
        return torch.nn.functional.layer_norm(x.float(), x.shape[-1:], eps=1e-6).bfloat16()

    dy, x = (torch.randn(16, 64, 1152, device="cuda").bfloat16() for _ in range(2))
    options = _options(TargetSpec())
    out, code = run_and_get_code(torch.compile(sums, **options), dy, x)
    want = sums(dy, x).float()
    assert (out.float() - want).norm() / want.norm() < 1e-2
    assert ("@triton_heuristics.reduction" in "\n".join(code)) == (looped == "1")
    _, code = run_and_get_code(torch.compile(norm, **options), x)
    assert "@triton_heuristics.persistent_reduction" in "\n".join(code)


class _TableBlock(torch.nn.Module):
    """Two adaLN-modulated norms whose shift / scale / gate are chunks of one learned table plus a time embedding
    shared by the batch (as diffusers' PixArt / Wan blocks): Inductor's mix-order reductions (torch 2.10-2.14)
    left the second norm's slice of the table's gradient unwritten at this size (pytorch#193061)."""

    def __init__(self, d):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(1, 6, d) / d ** 0.5)
        self.fc = torch.nn.Linear(d, d)

    def forward(self, x, temb):
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.table + temb).chunk(6, dim=1)
        norm = lambda h: torch.nn.functional.layer_norm(h, h.shape[-1:], eps=1e-6)  # noqa: E731
        x = x + gate1 * self.fc(norm(x) * (1 + scale1) + shift1)
        return x + gate2 * (norm(x) * (1 + scale2) + shift2)


class _TableNet(torch.nn.Module):
    def __init__(self, d, depth=2):
        super().__init__()
        self.blocks = torch.nn.ModuleList(_TableBlock(d) for _ in range(depth))

    def forward(self, x, temb):
        for b in self.blocks:
            x = b(x, temb)
        return x


def test_inductor_gradients_of_a_scale_shift_table_are_eagers():
    """The inductor target keeps Inductor's mix-order reductions off (target.mix_order_reduction): with them, a
    model like the above trained through sprintc.lower got wrong gradients with no error (32k tokens per step)."""
    import copy

    from sprintc.targets_api import lower

    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = _TableNet(256).cuda()
    model = lower(copy.deepcopy(ref), {"name": "inductor", "dtype": "float32"}, device="cuda")
    x, temb = torch.randn(2, 16384, 256, device="cuda"), torch.randn(1, 6, 256, device="cuda")
    for m in (ref, model):
        for _ in range(2):  # the second backward: a stale gradient buffer would show its first values
            m.zero_grad(set_to_none=True)
            m(x, temb).square().mean().backward()
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_master_adamw_kernel_rounds_to_nearest_and_matches_the_torch_update():
    from sprintc.kernels import GradientTable, adamw_master_, grad_norm
    from sprintc.optim import _update, join_master, split_master

    g = torch.Generator(device="cuda").manual_seed(0)
    sizes = (2048, 5, 2 * 2048 + 1)  # gradients read where they lie, at these places in the flat buffers
    offsets, n = (0, 2048, 4096), 5 * 2048  # the last one spans three blocks
    at = torch.cat([torch.arange(o, o + k) for o, k in zip(offsets, sizes)]).cuda()
    parts = [torch.randn(k, device="cuda", generator=g).bfloat16() for k in sizes]
    table = GradientTable(list(sizes), list(offsets), "cuda")
    table.point(parts)
    grads = torch.zeros(n, dtype=torch.bfloat16, device="cuda")
    grads[at] = torch.cat(parts)
    torch.testing.assert_close(grad_norm(table), grads.float().norm(), rtol=1e-6, atol=0)
    master = join_master(*split_master(torch.randn(n, device="cuda", generator=g)))
    m, v = torch.randn(n, device="cuda", generator=g) * 0.1, torch.rand(n, device="cuda", generator=g) * 0.01
    ref = [master.cpu(), torch.empty(n, dtype=torch.bfloat16), grads.cpu(), m.cpu(), v.cpu()]
    got = [*split_master(master), table, m.clone(), v.clone()]
    lr, step, scale, ema_w = (torch.tensor(x, device="cuda") for x in (3e-3, 7.0, 2.5, 0.3))
    ema = torch.randn(n, device="cuda", generator=g)
    ema_before = ema.clone()
    _update(*ref, lr.cpu(), step.cpu(), scale.cpu(), 0.9, 0.999, 1e-8, 0.05)
    adamw_master_(*got, lr, step, scale, 0.9, 0.999, 1e-8, 0.05, ema, ema_w)
    new_master = join_master(got[0], got[1])
    for a, b in ((new_master, ref[0]), (got[3], ref[3]), (got[4], ref[4])):
        torch.testing.assert_close(a[at].cpu(), b[at.cpu()], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ema[at], ema_before.lerp(new_master, ema_w)[at], rtol=1e-6, atol=1e-7)
    assert torch.equal(got[0][at], new_master[at].bfloat16())  # round to nearest, as autocast's cast
    assert torch.equal(got[1][at], split_master(new_master)[1][at])  # the low parts as the torch split has them


def test_master_adamw_kernel_stores_bf16_moments_as_the_torch_update_does():
    """train.moments_dtype: bfloat16: the kernel's moments, rounded stochastically with the bits optim.moment_noise
    gives, against optim._update's (float32 results 1e-7 apart may round to either neighbour)."""
    from sprintc.kernels import GradientTable, adamw_master_
    from sprintc.optim import _update, join_master, split_master

    g = torch.Generator(device="cuda").manual_seed(0)
    n = 64 * 2048
    parts = [torch.randn(n, device="cuda", generator=g).bfloat16()]
    table = GradientTable([n], [0], "cuda")
    table.point(parts)
    master = join_master(*split_master(torch.randn(n, device="cuda", generator=g)))
    m = (torch.randn(n, device="cuda", generator=g) * 0.1).bfloat16()
    v = (torch.rand(n, device="cuda", generator=g) * 0.01).bfloat16()
    lr, step, scale = (torch.tensor(x, device="cuda") for x in (3e-3, 12.0, 2.5))
    ref = [master.cpu(), torch.empty(n, dtype=torch.bfloat16), parts[0].cpu(), m.cpu(), v.cpu()]
    _update(*ref, lr.cpu(), step.cpu(), scale.cpu(), 0.9, 0.999, 1e-8, 0.05)
    got = [*split_master(master), table, m.clone(), v.clone()]
    adamw_master_(*got, lr, step, scale, 0.9, 0.999, 1e-8, 0.05)
    torch.testing.assert_close(join_master(got[0], got[1]).cpu(), ref[0], rtol=1e-6, atol=1e-7)
    for k in (3, 4):
        a, b = got[k].cpu().float(), ref[k].float()
        # (+ 1e-7: a moment that cancels to about 0, where float32 results 1e-7 apart differ wholly)
        assert bool(((a - b).abs() <= b.abs() * 2 ** -7 + 1e-7).all())
        assert float((a == b).double().mean()) > 0.999


def test_bf16_moments_train_as_float32_moments_in_the_captured_compiled_step(tmp_path):
    runs = {}
    for moments in ("float32", "bfloat16"):
        s = spec(stages=((8, 8, True), (6, 4, False)), master_weights=True, moments_dtype=moments)
        s["target"] = {"name": "inductor", "dtype": "bfloat16"}
        runs[moments] = train(s, tmp_path / moments, device="cuda", progress=False)
    a, b = runs["float32"]["losses"], runs["bfloat16"]["losses"]
    assert len(a) == len(b) == 14
    assert all(abs(x - y) <= 2e-2 * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)
    events = (tmp_path / "bfloat16" / "metrics.jsonl").read_text()
    assert "cuda_graph_fallback" not in events


def test_float32_adamw_kernel_steps_each_parameter_by_its_own_count():
    """adamw_float32_ (MasterAdamW's float32 parameters, read where they lie) against optim._update per parameter."""
    from sprintc.kernels import Float32Params, adamw_float32_, grad_norm
    from sprintc.optim import _update

    g = torch.Generator(device="cuda").manual_seed(0)
    sizes = (1001 * 1152, 72, 2049)
    values = [torch.randn(k, device="cuda", generator=g) for k in sizes]
    moments = [(torch.randn(k, device="cuda", generator=g) * 0.1, torch.rand(k, device="cuda", generator=g) * 0.01)
               for k in sizes]
    # (at step 1 the bias correction 1 - 0.999 loses digits in float32: there the GPU's exp2 and the CPU's pow
    # differ by 1e-5 relative, session AF's call 8)
    steps = [torch.tensor(s, device="cuda") for s in (3.0, 7.0, 12.0)]
    grads = [torch.randn(k, device="cuda", generator=g) for k in sizes]
    ref = [[t.cpu() for t in (x, *mv)] for x, mv in zip(values, moments)]
    table = Float32Params(values, [m for m, _ in moments], [v for _, v in moments], steps, "cuda")
    table.grads.point(grads)
    torch.testing.assert_close(grad_norm(table.grads), torch.cat(grads).norm(), rtol=1e-5, atol=0)
    lr, scale = torch.tensor(3e-3, device="cuda"), torch.tensor(2.5, device="cuda")
    for r, x, st in zip(ref, grads, steps):
        _update(r[0], r[0], x.cpu(), r[1], r[2], lr.cpu(), st.cpu(), scale.cpu(), 0.9, 0.999, 1e-8, 0.05)
    adamw_float32_(table, lr, scale, 0.9, 0.999, 1e-8, 0.05)
    for (x, (m, v)), r in zip(zip(values, moments), ref):
        for a, b in zip((x, m, v), r):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-7)


def test_a_captured_master_adamw_step_reads_the_gradients_of_each_replay():
    from sprintc.optim import MasterAdamW

    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(64, 256), nn.LayerNorm(256), nn.Linear(256, 64)).cuda() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [MasterAdamW(net, lr=1e-2) for net in nets]
    xs = [torch.randn(32, 64, device="cuda") for _ in range(4)]

    def step(net, opt, x):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", torch.bfloat16):
            net(x).float().square().mean().backward()
        return opt.clip_and_step(0.5)

    for x in xs[:2]:  # eager
        step(nets[0], opts[0], x)
    static = xs[0].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up, then the capture: the gradients move to the graph's memory
        step(nets[1], opts[1], static.copy_(xs[0]))
        opts[1].zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            norm = step(nets[1], opts[1], static)
    torch.cuda.current_stream().wait_stream(side)
    static.copy_(xs[1])
    graph.replay()
    for x in xs[2:]:
        want = step(nets[0], opts[0], x)
        static.copy_(x)
        graph.replay()
        torch.testing.assert_close(norm, want, rtol=1e-5, atol=0)
    eager, captured = (opt.float32_params(list(net.parameters())) for opt, net in zip(opts, nets))
    for a, b in zip(eager, captured):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_master_weights_train_as_autocast_and_checkpoints_hold_float32(tmp_path):
    runs = {}
    for master in (False, True):
        s = spec(stages=((8, 8, True), (6, 4, False)), checkpoint_every=5, master_weights=master)
        s["target"] = {"name": "eager", "dtype": "bfloat16"}
        runs[master] = train(s, tmp_path / str(master), device="cuda", progress=False)
    a, b = runs[False]["losses"], runs[True]["losses"]
    assert len(a) == len(b) == 14
    assert all(abs(x - y) <= 5e-3 * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)
    model = load_file(f"{runs[True]['checkpoint']}/model.safetensors")
    assert all(t.dtype == torch.float32 for t in model.values())
    # the EMA, updated in the optimizer's kernel with master weights, as the separate update makes it
    emas = [load_file(f"{runs[m]['checkpoint']}/ema.safetensors") for m in (False, True)]
    for k in emas[0]:
        torch.testing.assert_close(emas[1][k], emas[0][k], rtol=5e-3, atol=5e-3, msg=k)
    # the float32 masters were saved, not their bf16 copies
    assert any((t != t.bfloat16().float()).any() for k, t in model.items() if k.endswith("weight"))


def test_modulation_tables_in_the_captured_compiled_step_train_as_the_blocks_own(tmp_path, modulation_products):
    """target.batch_modulation with master weights (the tables' weights laid out next to each other): one product
    per table in the compiled, captured step, and the losses of the blocks' own modulations."""
    products = modulation_products
    runs = {}
    for batched in (False, True):
        s = spec(stages=((8, 8, True), (6, 4, False)), master_weights=True)
        s["target"] = {"name": "inductor", "dtype": "bfloat16", "batch_modulation": batched}
        runs[batched] = train(s, tmp_path / str(batched), device="cuda", progress=False)
        assert bool(products) == batched and all(k > 1 for k in products)
    a, b = runs[False]["losses"], runs[True]["losses"]
    assert len(a) == len(b) == 14
    assert all(abs(x - y) <= 2e-2 * max(1.0, abs(x)) for x, y in zip(a, b)), (a, b)


def test_a_run_with_master_weights_resumes_where_it_stopped(tmp_path):
    from sprintc import checkpoint as ckpt

    s = spec(stages=((4, 8, True), (3, 4, False)))
    s["target"] = {"name": "eager", "dtype": "bfloat16"}
    full = train(s, tmp_path / "a", device="cuda", progress=False)
    train(s, tmp_path / "b", device="cuda", progress=False, max_steps=4)
    rest = train(s, tmp_path / "b", device="cuda", resume=True, progress=False)
    assert len(rest["losses"]) == 3
    assert all(abs(x - y) <= 1e-4 * max(1.0, abs(x)) for x, y in zip(full["losses"][4:], rest["losses"])), (full, rest)
    a, b = ckpt.load(tmp_path / "a"), ckpt.load(tmp_path / "b")
    st = a.state["optimizer"]["state"]
    assert st["sprint.mask_token"]["step"] == 4 and st["blocks.0.attn.qkv.weight"]["step"] == 7
    for k in a.model:
        torch.testing.assert_close(b.model[k], a.model[k], rtol=1e-3, atol=1e-5, msg=k)


@pytest.mark.parametrize("a_transposed, b_transposed, bias, dtype", [
    (False, True, True, torch.bfloat16), (False, False, False, torch.bfloat16), (True, False, False, torch.bfloat16),
    (False, True, False, torch.float16)])
def test_tuned_matmuls_give_torchs_product_at_every_candidate(a_transposed, b_transposed, bias, dtype):
    """sprintc::tuned_mm at each of cuBLASLt's candidates, for the layouts of a linear's forward (x @ w.t() + b), input
    gradient (g @ w) and weight gradient (g.t() @ x): the float32 product, with cuBLASLt taking the heuristic's first
    pick; and tune_mm gives a candidate index or None, the same on a second ask."""
    from sprintc import cublaslt

    cublaslt.fallbacks.clear()
    g = torch.Generator(device="cuda").manual_seed(0)
    m, k, n = 2048, 1152, 3456
    a = torch.randn(k, m, device="cuda", generator=g).t() if a_transposed else torch.randn(m, k, device="cuda", generator=g)
    b = torch.randn(n, k, device="cuda", generator=g).t() if b_transposed else torch.randn(k, n, device="cuda", generator=g)
    c = torch.randn(n, device="cuda", generator=g) if bias else None
    a, b = a.to(dtype) * 0.1, b.to(dtype) * 0.1
    c = None if c is None else c.to(dtype)
    want = a.float() @ b.float() + (0 if c is None else c.float())
    for i in range(cublaslt.CANDIDATES):
        got = cublaslt.tuned_mm(a, b, c, i)
        assert got.dtype == dtype and got.shape == (m, n)
        assert ((got.float() - want).norm() / want.norm()).item() < 1e-2, i
        if i == 0:
            assert not cublaslt.fallbacks  # (a later index past the heuristic's list falls back to torch)
    chosen = cublaslt.tune_mm(a, b, c)
    assert chosen is None or 0 <= chosen < cublaslt.CANDIDATES
    assert cublaslt.tune_mm(a, b, c) == chosen


def test_inductor_with_tuned_matmuls_trains_as_eager(monkeypatch):
    """The inductor target with every matmul on a tuned cuBLASLt candidate (TUNE_MARGIN raised so that each product
    with candidates takes one): sprintc::tuned_mm runs in the compiled routed training step, cuBLASLt takes every
    call, and the fp16 loss and gradients are eager's under fp16 autocast."""
    import copy

    from sprintc import cublaslt
    from sprintc.targets_api import lower
    from test_targets import inputs, small

    monkeypatch.setattr(cublaslt, "TUNE_MARGIN", 1e9)
    monkeypatch.setattr(cublaslt, "_tuned", {})
    cublaslt.fallbacks.clear()
    torch._dynamo.reset()
    built = small()
    ref = copy.deepcopy(built.model).cuda()
    model = lower(built.model, {"name": "inductor", "dtype": "float16", "tuned_matmuls": True}, device="cuda")
    x, t, y = (a.cuda() for a in inputs(batch=4))
    g = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(16, generator=g)[:4] for _ in range(4)]).cuda()
    pd = torch.tensor([False, True, False, False]).cuda()

    def step(m, autocast):
        m.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
            loss = m(x, t, y, ids_keep=ids, path_drop=pd).float().square().mean()
        loss.backward()
        return loss.item(), [p.grad.float() for p in m.parameters()]

    with torch.profiler.profile() as prof:
        loss, grads = step(model, False)  # the lowering casts itself
    want, wgrads = step(ref, True)
    assert any("tuned_mm" in e.key for e in prof.key_averages())
    assert not cublaslt.fallbacks
    assert abs(loss - want) <= 1e-2 * abs(want)
    num = sum((a - b).norm() ** 2 for a, b in zip(grads, wgrads)) ** 0.5
    den = sum(b.norm() ** 2 for b in wgrads) ** 0.5
    assert num / den < 5e-2
