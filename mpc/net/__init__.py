"""Transports: the gRPC peer mesh and dealer link, and an in-memory mesh for tests."""

from importlib import metadata as _metadata

try:
    VERSION = _metadata.version("mpc")  # what Health replies report (mpc status)
except _metadata.PackageNotFoundError:  # run from a checkout that was never installed
    VERSION = "unknown"
