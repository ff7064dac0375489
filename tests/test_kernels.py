"""sprintc's Triton kernels (sprintc/kernels.py) against the model's own expression. On the CPU they run in
Triton's interpreter (TRITON_INTERPRET=1 must be set before triton compiles anything: hence a fresh process);
tests/test_cuda.py runs them compiled on a GPU, inside the compiled model."""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from sprintc.model import DiT
from sprintc.spec import load_spec

pytest.importorskip("triton")


def interpreted(script: str, ok: str):
    """Run `script` in a fresh process under Triton's interpreter; it prints `ok` when its checks pass."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and ok in r.stdout, r.stdout + r.stderr

CHECK = textwrap.dedent("""
    import torch
    from sprintc.kernels import qk_norm_rope
    from sprintc.model import Attention, rope_angles

    def expression(attn, qkv, rope):  # Attention.forward's unfused branch, stopped before the attention
        return attn.split_heads(qkv, rope)

    torch.manual_seed(0)
    # head counts and widths not powers of two (XL: 16 x 72, read as 64 + 8 columns; 14: 8 + 6 padded to 8);
    # tokens not a multiple of a tile
    for B, N, H, DH in ((3, 13, 3, 10), (2, 13, 2, 14), (2, 13, 5, 8)):
        attn = Attention(H * DH, H, "rms").double()
        for w in (attn.q_norm.weight, attn.k_norm.weight):
            w.data.uniform_(0.5, 1.5)
        table = rope_angles((13, 1), DH).double()
        for kind in ("shared", "routed", "none"):
            rope = {"shared": table, "routed": table[torch.stack([torch.randperm(N) for _ in range(B)])], "none": None}[kind]
            qkv = torch.randn(B, N, 3 * H * DH, dtype=torch.float64, requires_grad=True)
            ref = expression(attn, qkv, rope)
            out = qk_norm_rope(qkv, attn.q_norm.weight, attn.k_norm.weight, rope, attn.q_norm.eps)
            for name, a, b in zip("qkv", out, ref):  # the kernels compute in float32
                assert a.shape == b.shape and a.stride(-1) == 1, (kind, name, a.shape)  # rows contiguous for attention
                assert (a - b).abs().max() < 1e-5, (kind, name, (a - b).abs().max())
            # gradients in the layouts attention's backward may give: token-major, transposed, head-major
            grads = [torch.randn_like(o) for o in out]
            grads[1] = torch.randn(B, N, H, DH, dtype=torch.float64).transpose(1, 2)
            grads[2] = torch.randn(B, H, N, DH, dtype=torch.float64)
            wrt = (qkv, attn.q_norm.weight, attn.k_norm.weight)
            want = torch.autograd.grad(ref, wrt, grads, retain_graph=True)
            got = torch.autograd.grad(out, wrt, grads, retain_graph=True)
            for name, a, b in zip(("qkv", "wq", "wk"), got, want):
                assert (a - b).abs().max() < 1e-5 * max(1.0, b.abs().max()), (kind, name, (a - b).abs().max())
        # bf16 in, as under autocast: the norm's output rounded as the model rounds it
        qkv = torch.randn(B, N, 3 * H * DH).bfloat16()
        attn = attn.float()
        ref = expression(attn, qkv.float(), table.float())
        out = qk_norm_rope(qkv, attn.q_norm.weight, attn.k_norm.weight, table.float(), attn.q_norm.eps)
        for name, a, b in zip("qkv", out, ref):
            assert a.dtype == torch.bfloat16 and (a.float() - b).abs().max() < 0.05, (name, (a.float() - b).abs().max())
    print("kernels ok")
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU tests/test_cuda.py runs the compiled kernels (and torch "
                    "2.11's wrap_triton rejects the interpreter's functions)")
def test_qk_norm_rope_matches_the_expression_forward_and_backward():
    interpreted(CHECK, "kernels ok")


ATTENTION_CHECK = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from sprintc.kernels import short_attention

    torch.manual_seed(0)
    # tokens and head widths not powers of two (XL's routed blocks: 64 x 72); float32 and float64 only: the
    # interpreter's tl.dot gets bf16 wrong (tests/test_cuda.py checks bf16 on a GPU)
    for B, H, N, DH, dtype in ((2, 3, 13, 10, torch.float64), (1, 2, 64, 72, torch.float32), (2, 1, 1, 16, torch.float64)):
        qkv = torch.randn(B, N, 3, H, DH, dtype=dtype, requires_grad=True)
        head_major = [torch.randn(B, H, N, DH, dtype=dtype, requires_grad=True) for _ in range(3)]
        for layout, (q, k, v) in (("views of qkv", qkv.permute(2, 0, 3, 1, 4)), ("head-major", head_major)):
            leaves = (qkv,) if layout == "views of qkv" else tuple(head_major)
            ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
            out = short_attention(q, k, v)
            assert out.dtype == dtype and out.shape == ref.shape, (layout, out.dtype, out.shape)
            assert out.transpose(1, 2).is_contiguous(), out.stride()  # token-major: the projection's reshape is a view
            assert (out - ref).abs().max() < 1e-5, (layout, (out - ref).abs().max())
            g = torch.randn(B, N, H, DH, dtype=dtype).transpose(1, 2)  # the layout the projection's backward gives
            want = torch.autograd.grad(ref, leaves, g.double())
            got = torch.autograd.grad(out, leaves, g)
            for a, b in zip(got, want):
                assert (a - b).abs().max() < 1e-5 * max(1.0, b.abs().max()), (layout, (a - b).abs().max())
    try:
        short_attention(*torch.randn(3, 1, 1, 65, 8).unbind(0))
    except ValueError as e:
        assert "N <= 64" in str(e), e
    else:
        raise AssertionError("65 tokens accepted")
    print("attention ok")
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU tests/test_cuda.py runs the compiled kernel")
def test_short_attention_matches_sdpa_forward_and_backward():
    interpreted(ATTENTION_CHECK, "attention ok")


QKV_CHECK = textwrap.dedent("""
    import torch
    import torch.nn.functional as F
    from sprintc.kernels import qkv_attention
    from sprintc.model import Attention, rope_angles

    torch.manual_seed(0)
    # the routed blocks' op: q/k RMSNorm + RoPE, then attention over v read in place; against the model's expression
    for B, N, H, DH, dtype in ((3, 13, 3, 10, torch.float64), (1, 64, 2, 72, torch.float32), (2, 5, 1, 16, torch.float64)):
        attn = Attention(H * DH, H, "rms").to(dtype)
        for w in (attn.q_norm.weight, attn.k_norm.weight):
            w.data.uniform_(0.5, 1.5)
        table = rope_angles((N, 1), DH).to(dtype)
        for kind in ("shared", "routed", "none"):
            rope = {"shared": table, "routed": table[torch.stack([torch.randperm(N) for _ in range(B)])], "none": None}[kind]
            qkv = torch.randn(B, N, 3 * H * DH, dtype=dtype, requires_grad=True)
            ref = F.scaled_dot_product_attention(*attn.split_heads(qkv, rope))
            out = qkv_attention(qkv, attn.q_norm.weight, attn.k_norm.weight, rope, attn.q_norm.eps)[0]
            assert out.shape == ref.shape and out.transpose(1, 2).is_contiguous(), (kind, out.shape, out.stride())
            assert (out - ref).abs().max() < 1e-5, (kind, (out - ref).abs().max())
            g = torch.randn(B, N, H, DH, dtype=dtype).transpose(1, 2)  # the layout the projection's backward gives
            wrt = (qkv, attn.q_norm.weight, attn.k_norm.weight)
            want = torch.autograd.grad(ref, wrt, g)
            got = torch.autograd.grad(out, wrt, g)
            for name, a, b in zip(("qkv", "wq", "wk"), got, want):
                assert (a - b).abs().max() < 1e-5 * max(1.0, b.abs().max()), (kind, name, (a - b).abs().max())
    print("qkv attention ok")
""")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU tests/test_cuda.py runs the compiled kernels")
def test_qkv_attention_matches_the_expression_forward_and_backward():
    interpreted(QKV_CHECK, "qkv attention ok")


def test_use_kernels_marks_every_attention_for_short_sequences_and_the_rms_ones_for_qk():
    from sprintc.kernels import SHORT_TOKENS, use_kernels

    sit = DiT(load_spec("sit_xl").model.model_copy(update={"width": 64, "depth": 2, "heads": 4}))
    dit = DiT(load_spec("dit_xl").model.model_copy(update={"width": 64, "depth": 2, "heads": 4}))
    assert use_kernels(sit) == 2 and all(b.attn.fused_qk for b in sit.blocks)
    assert use_kernels(dit) == 2 and not any(b.attn.fused_qk for b in dit.blocks)  # DiT has no q/k norm
    assert all(b.attn.short_tokens == SHORT_TOKENS for m in (sit, dit) for b in m.blocks)


def test_marked_attention_on_the_cpu_computes_the_expression():
    """The kernels are for CUDA tensors: a marked model on the CPU keeps the plain expression."""
    from sprintc.kernels import use_kernels

    torch.manual_seed(0)
    m = load_spec("sit_xl").model
    sit = DiT(m.model_copy(update={"width": 64, "depth": 2, "heads": 4, "input": m.input.model_copy(update={"size": 8})}))
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2])
    ref = sit(x, t, y)
    use_kernels(sit)
    torch.testing.assert_close(sit(x, t, y), ref, rtol=0, atol=0)


def test_the_kernels_source_is_in_inductors_cache_keys(tmp_path, monkeypatch):
    """Inductor's caches key a graph by its custom ops' names: the inductor target adds a hash of kernels.py and
    cublaslt.py, so a graph compiled with other kernels or matmul ops is not read back."""
    from pathlib import Path

    import sprintc
    from sprintc.spec import TargetSpec
    from sprintc.targets.inductor import _options

    def key(**target):
        opts = _options(TargetSpec(name="inductor", **target)).get("options", {})
        return opts["post_grad_custom_post_pass"].uuid() if "post_grad_custom_post_pass" in opts else None

    shipped = key()
    here = Path(sprintc.__file__)
    kernels, cublaslt = here.with_name("kernels.py").read_bytes(), here.with_name("cublaslt.py").read_bytes()
    edit = b"\n# changed\n"
    for name, k, c in (("same", kernels, cublaslt), ("changed", kernels + edit, cublaslt), ("lt", kernels, cublaslt + edit)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "kernels.py").write_bytes(k)
        (tmp_path / name / "cublaslt.py").write_bytes(c)
        monkeypatch.setattr(sprintc, "__file__", str(tmp_path / name / "__init__.py"))
        assert (key() == shipped) == (name == "same")
    assert key(kernels=False, tuned_matmuls=False) is None
    assert (key(kernels=False) is None) == (not torch.cuda.is_available())  # on CUDA the tuned matmuls keep the pass
    # the developer's switches pick tiles and kernels when a graph is traced: part of the key too (a graph traced under
    # another setting would otherwise be read back)
    monkeypatch.setattr(sprintc, "__file__", str(tmp_path / "same" / "__init__.py"))
    monkeypatch.setenv("SPRINTC_SHORT_ATTENTION", "0,4,4")
    assert key() != shipped


def test_the_cache_key_pass_runs_after_a_users_own_post_grad_pass(monkeypatch):
    from torch._inductor import config
    from torch._inductor.custom_graph_pass import CustomGraphPass

    from sprintc.spec import TargetSpec
    from sprintc.targets.inductor import KernelsInCacheKey, _options

    class UserPass(CustomGraphPass):
        calls = 0

        def __call__(self, graph):
            UserPass.calls += 1

        def uuid(self):
            return "user-pass-1"

    def configured():
        return _options(TargetSpec(name="inductor")).get("options", {}).get("post_grad_custom_post_pass")

    monkeypatch.setattr(config, "post_grad_custom_post_pass", UserPass())
    chained = configured()
    assert isinstance(chained, KernelsInCacheKey) and chained.uuid()[1] == "user-pass-1"
    chained(torch.fx.Graph())
    assert UserPass.calls == 1
    # a plain function has no uuid, so Inductor does not cache such graphs anyway: sprintc leaves it in place
    monkeypatch.setattr(config, "post_grad_custom_post_pass", lambda graph: None)
    assert configured() is None


@pytest.mark.parametrize("heads, width", [(16, 72), (12, 64)])  # XL's heads; B's
def test_the_kernels_compile_for_hopper_without_spills_or_2_byte_loads(heads, width):
    """Compiled for sm_90 here (Triton's PTX, Triton's ptxas): session I's backward needed 255 registers and spilled,
    so one program ran per SM and the training step got slower; unaligned bf16 loads are issued 2 bytes at a time."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "kernel_registers.py"
    spec = importlib.util.spec_from_file_location("kernel_registers", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    try:
        if not Path(tool.ptxas()).exists():
            pytest.skip("this triton has no ptxas")
    except RuntimeError as e:  # Triton's knobs raise when they find no ptxas at all
        pytest.skip(f"this triton has no ptxas: {e}")
    found = tool.kernels(heads, width)
    assert len(found) == 8  # q/k forward and backward, short attention's forward and backward, each in two layouts
    for name, r in found.items():  # the attention's backward holds five whole-sequence tiles: 165 registers (Triton 3.8)
        assert r["spill_bytes"] == 0 and r["registers"] <= (192 if name.startswith("attention") else 128), (name, r)
        assert "ld.global.b16" not in r["accesses"] and "st.global.b16" not in r["accesses"], (name, r)
        assert r["f64_instructions"] == 0, (name, r)


def test_no_kernel_inside_compiled_graphs_takes_a_float_argument():
    """Inductor launches the kernels of sprintc's triton_ops itself and types a Python float argument as fp64
    (torch/_inductor/codegen/triton_utils.py), which turns the math it touches into float64: short_attention's softmax
    did so in every compiled step until session V (about 1,000 f64 instructions per kernel, measured in the PTX). Floats
    go in as constants (tl.constexpr) or 0-d tensors instead."""
    import inspect

    import sprintc.kernels as K

    launched = [K._fwd_kernel, K._bwd_kernel, K._attention_fwd_kernel, K._attention_bwd_kernel]  # by wrap_triton
    source = inspect.getsource(K)
    assert source.count("wrap_triton(") == len(launched)  # no other kernel is launched through Inductor
    for kernel in launched:
        params = inspect.signature(kernel.fn).parameters.values()
        runtime = [p.name for p in params if p.annotation is inspect.Parameter.empty or "constexpr" not in str(p.annotation)]
        assert not {"scale", "eps"} & set(runtime), (kernel.fn.__name__, runtime)


@pytest.mark.parametrize("switch, value, message",
                         [("SPRINTC_QK_BLOCKS", v, "expected five or six positive integers") for v in ("4,4,1,4", "4,x,1,4,5", "4,4,0,4,5", "4,4,1,4,5,0")]
                         + [("SPRINTC_GELU_EPILOGUE", v, "expected 0, 1 or sample") for v in ("2", "on", " 1", "fwd")]
                         + [("SPRINTC_PERSISTENT_ROWS", v, "expected a whole number") for v in ("x", "-1", "2k")]
                         + [("SPRINTC_LOOPED_SUMS", v, "expected 0 or 1") for v in ("yes", "2", " 1")])
def test_a_malformed_kernel_switch_is_a_clear_error(monkeypatch, switch, value, message):
    from sprintc.model import Mlp
    from sprintc.targets.inductor import use_kernels
    from sprintc.targets_api import TargetError

    sit = DiT(load_spec("sit_xl").model.model_copy(update={"width": 64, "depth": 2, "heads": 4}))
    monkeypatch.setenv(switch, value)
    with pytest.raises(TargetError, match=rf"{switch}={re.escape(repr(value))}: {message}"):
        use_kernels(sit)
    monkeypatch.delenv(switch)
    mlps = [m for m in sit.modules() if isinstance(m, Mlp)]
    assert use_kernels(sit) == 2  # the GELU epilogues are on by default, in sampling and in training
    assert all(m.gelu_epilogue and m.gelu_train for m in mlps)
    monkeypatch.setenv("SPRINTC_GELU_EPILOGUE", "sample")
    use_kernels(sit)
    assert all(m.gelu_epilogue and not m.gelu_train for m in mlps)
    monkeypatch.setenv("SPRINTC_GELU_EPILOGUE", "0")
    use_kernels(sit)
    assert not any(m.gelu_epilogue or m.gelu_train for m in mlps)


@pytest.mark.parametrize("value", ["64,4", "65,4,4", "64,4,0", "64,4,4,1", "a,4,4"])
def test_a_malformed_attention_switch_is_a_clear_error(monkeypatch, value):
    import sprintc.kernels as K
    from sprintc.targets.inductor import use_kernels
    from sprintc.targets_api import TargetError

    for name in ("SHORT_TOKENS", "ATTENTION_WARPS"):  # restored after the test
        monkeypatch.setattr(K, name, getattr(K, name))
    sit = DiT(load_spec("sit_xl").model.model_copy(update={"width": 64, "depth": 2, "heads": 4}))
    monkeypatch.setenv("SPRINTC_SHORT_ATTENTION", value)
    with pytest.raises(TargetError, match=r"SPRINTC_SHORT_ATTENTION=.*expected tokens"):
        use_kernels(sit)
    monkeypatch.setenv("SPRINTC_SHORT_ATTENTION", "0,2,8")  # every attention to SDPA
    assert use_kernels(sit) == 2 and all(b.attn.short_tokens == 0 for b in sit.blocks)
    assert K.ATTENTION_WARPS == (2, 8)


def test_the_persistent_reduction_patch_wraps_inductor_once_and_only_for_sprintcs_compiles():
    """The patched heuristic wraps Inductor's own once (lowering many models does not stack wrappers), and a compile
    without sprintc's cache-key pass gets Inductor's answer."""
    from torch._inductor.choices import InductorChoices

    from sprintc.targets.inductor import patch_persistent_reductions

    patch_persistent_reductions()
    first = InductorChoices.__dict__["should_use_persistent_reduction"]
    patch_persistent_reductions()
    assert InductorChoices.__dict__["should_use_persistent_reduction"] is first
    assert (first.__func__ if isinstance(first, staticmethod) else first).sprintc

    class Features:  # a row of 1152 elements; outside a sprintc compile the wrapper must not even look at it
        reduction_numel = 1152

        def get_reduction_hint(self):
            raise AssertionError("looked at a compile that is not sprintc's")

        strict_sum_rblock = get_reduction_hint  # the first thing the wrapper reads past its guard

    from unittest import mock

    with mock.patch.object(torch._inductor.config, "post_grad_custom_post_pass", None):
        base = first.__func__ if isinstance(first, staticmethod) else first
        with mock.patch.object(torch._inductor.config.triton, "persistent_reductions", False):
            assert base(Features(), False) is False  # Inductor's own answer (persistent reductions off)

