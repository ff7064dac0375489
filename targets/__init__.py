"""Lowerings of a built model: eager, inductor (CPU/CUDA, regional), aot (torch.export + AOTInductor)."""
