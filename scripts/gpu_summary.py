"""Print the figures of a gpu_suite.sh work folder compactly (the device reply keeps only the output's tail)."""
import glob
import json
import os
import sys

w = sys.argv[1]
for f in sorted(glob.glob(os.path.join(w, "*.json"))):
    d = json.load(open(f))
    name = os.path.basename(f)
    if "meta" in d:
        m = d["meta"]
        print(f"== {name}: {m['device_name']} torch {m['torch']} peak {m['matmul_peak_tflops']} TFLOP/s build {m['build_s']}s")
        for r in d["train"]:
            print(" train", {k: v for k, v in r.items() if k not in ("ms_min", "gflop_per_img")})
        for r in d["sample"] + d["sample250"] + d["summary"]:
            print(" ", r)
    else:
        print(f"== {name}:", d)
for f in sorted(glob.glob(os.path.join(w, "anchor_b*/*.json"))):
    print(f"== {f[len(w) + 1:]}")
    for r in json.load(open(f)):
        print(" ", r)
if os.path.exists(os.path.join(w, "rc.txt")):
    print(open(os.path.join(w, "rc.txt")).read())
