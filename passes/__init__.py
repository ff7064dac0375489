"""The SPRINT rewrites, one pass per file. Importing this package registers them."""
from sprintc.passes import fuse, partition, path_drop, pdg, route  # noqa: F401
