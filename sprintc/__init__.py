"""sprintc: a declarative model compiler for diffusion transformers, with SPRINT's rewrites as passes.

    import sprintc
    spec = sprintc.load_spec("sit_xl_sprint", model__depth=8)   # a path, a preset name or a dict
    model = sprintc.build(spec)                                  # forward(x, t, y, ids_keep=None)
    sprintc.load_reference(model, "sprint_checkpoint.safetensors")

Attributes are imported on first use, so `import sprintc` stays fast (torch loads only when needed).
"""
__version__ = "0.1.0"

_API = {
    "load_spec": "sprintc.spec",
    "Spec": "sprintc.spec",
    "build": "sprintc.compiler",
    "compile_spec": "sprintc.compiler",
    "load_reference": "sprintc.reference",
    "transform": "sprintc.transforms",
    "untransform": "sprintc.transforms",
    "TransformConfig": "sprintc.transforms",
    "lower": "sprintc.targets_api",
    "MasterAdamW": "sprintc.optim",
    "SprintcError": "sprintc.errors",
    "SpecError": "sprintc.errors",
}

__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'sprintc' has no attribute {name!r}")
