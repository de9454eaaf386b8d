"""Loading what `mpc infer` and `mpc explain` are given: a model factory, weights, inputs.

A model is named by an importable factory, `package.module:function`, called with
keyword arguments; weights come from a `torch.save`d state dict, read with
`weights_only=True` (plain tensors only: no code runs while loading). Inputs are `.pt`
(a tensor) or `.npy` (read with allow_pickle=False).
"""

from __future__ import annotations

import importlib
import json
import os

import numpy as np
import torch


class ModelFileError(ValueError):
    """A factory, state dict or input file that cannot be used; the message says why."""


def load_factory(spec: str, kwargs: str | None = None) -> torch.nn.Module:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelFileError(f"model factory {spec!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelFileError(f"cannot import {module_name!r} for model factory {spec!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelFileError(f"{module_name} has no callable {attr!r} (model factory {spec!r})")
    try:
        args = json.loads(kwargs) if kwargs else {}
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"factory arguments are not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise ModelFileError(f"factory arguments must be a JSON object (keyword arguments), got {kwargs!r}")
    try:
        model = factory(**args)
    except Exception as exc:  # the user's code: say which call failed and how, not a traceback
        raise ModelFileError(f"model factory {spec!r} failed with arguments {args}: "
                             f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelFileError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"state dict file {path} does not exist") from None
    except Exception as exc:  # torch raises several kinds for a file that is not a state dict
        raise ModelFileError(f"cannot read a state dict from {path}: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def load_input(path: str) -> torch.Tensor:
    ext = os.path.splitext(path)[1]
    try:
        if ext == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False)).to(torch.float64)
        if ext == ".pt":
            value = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(value, torch.Tensor):
                raise ModelFileError(f"{path} holds a {type(value).__name__}, not a tensor")
            return value.to(torch.float64)
    except FileNotFoundError:
        raise ModelFileError(f"input file {path} does not exist") from None
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelFileError(f"cannot read input {path}: {exc}") from None
    raise ModelFileError(f"input file {path}: expected .pt or .npy, got {ext or 'no extension'}")
