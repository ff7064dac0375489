"""Registers, spills and global load/store widths of sprintc's Triton kernels (sprintc/kernels.py), compiled for a
GPU architecture on this machine, no GPU needed: Triton writes the PTX and the `ptxas` that ships with Triton
assembles it. Session J found its slow backward this way (255 registers with spills: one program per SM).

    python scripts/kernel_registers.py [--arch 90] [--heads 16] [--head-width 72] [--tokens 256]
"""
import argparse
import collections
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import sprintc.kernels as K


def ptxas(arch=90):
    """The ptxas Triton itself runs for `arch` (a system CUDA's when TRITON_PTXAS_PATH or its knobs say so): another
    ptxas may reject the PTX version this Triton writes (the device's torch 2.11 build failed with its bundled one)."""
    from triton.backends.nvidia import compiler

    try:
        return compiler.get_ptxas(arch).path
    except TypeError:  # older Triton: get_ptxas() takes no architecture
        return compiler.get_ptxas().path


def compiled(fn, signature, constants, aligned, warps, arch):
    """fn compiled as the launcher would at these constants; `aligned` arguments marked 16-byte divisible."""
    signature = {**signature, **{name: "constexpr" for name in constants}}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    src = ASTSource(fn, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


def resources(kernel, arch):
    """Registers and spill stores (bytes) per thread by ptxas, the float64 instructions in the PTX, and the count of each
    global load / store width."""
    ptx = kernel.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        open(path, "w").write(ptx)
        tool = ptxas(arch)
        done = subprocess.run([tool, "-v", f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", path,
                               "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}) on {kernel.name}: {done.stderr.strip()}")
        info = done.stderr
    return {"registers": int(re.search(r"Used (\d+) registers", info).group(1)),
            "spill_bytes": int(re.search(r"(\d+) bytes spill stores", info).group(1)),
            "f64_instructions": len(re.findall(r"\.f64\b", ptx)),
            "accesses": dict(collections.Counter(m.group(0) for m in re.finditer(r"\b(ld|st)\.global(\.[a-z0-9]+)*", ptx)))}


def kernels(heads=16, head_width=72, tokens=256, arch=90):
    """{name: resources} of the forward and backward kernels at their default tiles (SPRINTC_QK_BLOCKS overrides)."""
    N, H, DH = tokens, heads, head_width
    common = dict(EPS=1e-6, N=N, H=H, DH=DH, BLOCK_H=triton.next_power_of_2(H), HAS_ROPE=True)
    aligned_strides = ["s_rb", "s_rn"]  # the RoPE table's strides, 0 or multiples of 2 * DH floats
    out = {}
    t, warps = K._tiles("fwd")
    da, db = K._split(DH)
    sig = {"qkv": "*bf16", "wq": "*fp32", "wk": "*fp32", "rope": "*fp32", "q_out": "*bf16", "k_out": "*bf16",
           "v_out": "*bf16", "n_tok": "i32", "s_rb": "i32", "s_rn": "i32"}
    for with_v in (True, False):  # qk_norm_rope's (v copied); qkv_attention's (q and k only)
        fwd = compiled(K._fwd_kernel, sig, {**common, "T": t, "DA": da, "DB": db, "WITH_V": with_v},
                       [n for n in sig if sig[n].startswith("*")] + aligned_strides, warps, arch)
        out[f"forward {t} tok x {warps} warps{'' if with_v else ', q k'}"] = resources(fwd, arch)
    t, warps, _, stages = K._tiles("bwd")
    sig = {**{n: "*bf16" for n in ("dq", "dk", "dv", "qkv", "dqkv")}, "wq": "*fp32", "wk": "*fp32", "rope": "*fp32",
           "dw_part": "*fp32", "n_tok": "i32", "n_tiles": "i32", "s_rb": "i32", "s_rn": "i32"}
    strides = dict(S0=N * H * DH, S1=DH, S2=H * DH)  # token-major gradients, as attention's backward gives them
    for with_v in (True, False):
        bwd = compiled(K._bwd_kernel, sig, {**common, **strides, "T": t, "BLOCK_D": triton.next_power_of_2(DH),
                                            "WITH_V": with_v, "STAGES": stages},
                       [n for n in sig if sig[n].startswith("*")] + aligned_strides, warps, arch)
        out[f"backward {t} tok x {warps} warps{'' if with_v else ', q k'}"] = resources(bwd, arch)
    out.update(attention(heads, head_width, K.SHORT_TOKENS, arch))
    return out


def attention(heads=16, head_width=72, tokens=64, arch=90, warps=None):
    """{name: resources} of short_attention's forward and backward kernels at `tokens` (ATTENTION_WARPS by default),
    on token-major q, k, v and as qkv_attention runs them (v read from, dv written into, the qkv layout)."""
    _, _, _, _, bn, bd = K._attention_shapes(torch.empty(0, heads, tokens, head_width, device="meta"))
    const = dict(N=tokens, H=heads, DH=head_width, BN=bn, BD=bd, SCALE=head_width ** -0.5)
    fwd_warps, bwd_warps = warps or K.ATTENTION_WARPS
    row = heads * head_width
    out = {}
    for layout, rows in (("", dict(QR=row, KR=row, VR=row, DV_AT=0, DVR=row)),
                         (", v in qkv", dict(QR=row, KR=row, VR=3 * row, DV_AT=2 * row, DVR=3 * row))):
        for which, fn, names, w in (("forward", K._attention_fwd_kernel, "q k v o", fwd_warps),
                                    ("backward", K._attention_bwd_kernel, "q k v o do dq dk dv", bwd_warps)):
            sig = {n: "*bf16" for n in names.split()}  # the softmax scale is a constant (SCALE)
            used = {n: rows[n] for n in rows if n in fn.arg_names}
            out[f"attention {which} {tokens} tok x {w} warps{layout}"] = resources(
                compiled(fn, sig, {**const, **used}, [n for n in sig if sig[n].startswith("*")], w, arch), arch)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-width", type=int, default=72)
    p.add_argument("--tokens", type=int, default=256)
    args = p.parse_args()
    for name, r in kernels(args.heads, args.head_width, args.tokens, args.arch).items():
        print(f"{name:28s} registers {r['registers']:4d}  spill stores {r['spill_bytes']:4d} B  "
              f"f64 instructions {r['f64_instructions']}  {r['accesses']}")


if __name__ == "__main__":
    main()
