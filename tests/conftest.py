"""Shared test helpers: closeness checks against torch, and the CI rule for CrypTen."""

from __future__ import annotations

import os

import pytest
import torch

ULP = 2.0 ** -16


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str = "") -> None:
    """Shape must match exactly; values within atol (absolute) in float64."""
    assert actual is not None, f"{what}: no value"
    assert tuple(actual.shape) == tuple(expected.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:.3g}"


@pytest.fixture(scope="session")
def crypten_available():
    """CrypTen must be there in CI; elsewhere a missing CrypTen skips with the reason."""
    try:
        from mpc import reference

        reference.import_crypten()
    except ImportError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"CrypTen is not installed ({exc}); run scripts/install-crypten.sh")
    return True
