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

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import sprintc.kernels as K

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def compiled(fn, signature, constants, aligned, warps, arch):
    """fn compiled as the launcher would at these constants; `aligned` arguments marked 16-byte divisible."""
    signature = {**signature, **{name: "constexpr" for name in constants}}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    src = ASTSource(fn, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


def report(name, kernel, arch):
    ptx = kernel.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        open(path, "w").write(ptx)
        info = subprocess.run([PTXAS, "-v", f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", path,
                               "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", info).group(1)
    spills = re.search(r"(\d+) bytes spill stores", info).group(1)
    widths = collections.Counter(m.group(0) for m in re.finditer(r"\b(ld|st)\.global(\.[a-z0-9]+)*", ptx))
    print(f"{name:28s} registers {regs:>4s}  spill stores {spills:>4s} B  {dict(widths)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-width", type=int, default=72)
    p.add_argument("--tokens", type=int, default=256)
    args = p.parse_args()
    N, H, DH = args.tokens, args.heads, args.head_width
    common = dict(EPS=1e-6, N=N, H=H, DH=DH, BLOCK_H=triton.next_power_of_2(H), HAS_ROPE=True)
    aligned_strides = ["s_rb", "s_rn"]  # the RoPE table's strides, 0 or multiples of 2 * DH floats
    tokens, warps = K._blocks("fwd", *K.FWD_TILES)
    da, db = K._split(DH)
    sig = {"qkv": "*bf16", "wq": "*fp32", "wk": "*fp32", "rope": "*fp32", "q_out": "*bf16", "k_out": "*bf16",
           "v_out": "*bf16", "n_tok": "i32", "s_rb": "i32", "s_rn": "i32"}
    fwd = compiled(K._fwd_kernel, sig, {**common, "T": tokens, "DA": da, "DB": db},
                   [n for n in sig if sig[n].startswith("*")] + aligned_strides, warps, args.arch)
    report(f"forward {tokens} tok x {warps} warps", fwd, args.arch)
    tokens, warps, _ = K._blocks("bwd", *K.BWD_TILES)
    sig = {**{n: "*bf16" for n in ("dq", "dk", "dv", "qkv", "dqkv")}, "wq": "*fp32", "wk": "*fp32", "rope": "*fp32",
           "dw_part": "*fp32", "n_tok": "i32", "n_tiles": "i32", "s_rb": "i32", "s_rn": "i32"}
    strides = dict(S0=N * H * DH, S1=DH, S2=H * DH)  # token-major gradients, as attention's backward gives them
    bwd = compiled(K._bwd_kernel, sig, {**common, **strides, "T": tokens, "BLOCK_D": triton.next_power_of_2(DH)},
                   [n for n in sig if sig[n].startswith("*")] + aligned_strides, warps, args.arch)
    report(f"backward {tokens} tok x {warps} warps", bwd, args.arch)


if __name__ == "__main__":
    main()
