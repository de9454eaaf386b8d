"""mpc: a multi-party computation runtime for privacy-preserving machine learning.

User-facing names come from mpc.api (the lazy SecretTensor API, InMemoryCluster) and
mpc.launcher (LocalCluster) and mpc.client (ClusterClient, for a running cluster); see README.md for the architecture.
"""

_EXPORTS = {
    "LocalCluster": "mpc.launcher",
    "ClusterClient": "mpc.client",
    "InMemoryCluster": "mpc.api",
    "SecretTensor": "mpc.api",
    "MPCError": "mpc.api",
    "cat": "mpc.api",
    "stack": "mpc.api",
    "conv2d": "mpc.api",
    "where": "mpc.api_functions",
    "max_pool2d": "mpc.api_functions",
    "compile": "mpc.compiler.model",
    "train_job": "mpc.train_jobs",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    # Import lazily: `import mpc.ring` should not pull in gRPC for the lower layers.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mpc' has no attribute {name!r}")
