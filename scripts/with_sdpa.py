"""Run the sprintc CLI with only some of SDPA's backends enabled, for an A/B in one device call:
python3 scripts/with_sdpa.py flash,efficient bench SPEC ...  (names: cudnn, flash, efficient; "all" = as shipped; math stays on as the fallback)
The compiled graphs pick their attention kernel when traced, so give each arm its own TORCHINDUCTOR_CACHE_DIR."""
import sys

import torch

from sprintc.cli import main

keep = sys.argv[1].split(",")
if keep != ["all"]:
    torch.backends.cuda.enable_cudnn_sdp("cudnn" in keep)
    torch.backends.cuda.enable_flash_sdp("flash" in keep)
    torch.backends.cuda.enable_mem_efficient_sdp("efficient" in keep)
raise SystemExit(main(sys.argv[2:]))
