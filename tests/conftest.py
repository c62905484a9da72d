"""Shared test setup: per-test seeding and the ``--device`` option.

``--device`` (default ``cpu``) is where device-generic tests put their tensors. CPU CI runs
``TRITON_INTERPRET=1 pytest --device=cpu`` so Triton kernels run in Triton's interpreter; a GPU
host runs ``TRITON_INTERPRET=0 pytest --device=cuda`` for the compiled kernels.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        action="store",
        default="cpu",
        help="torch device for device-generic tests: cpu (default), cuda, cuda:1, ...",
    )


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every test starts from the same RNG state, whatever ran before it."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    """The ``--device`` torch device; skips when it names a CUDA device that is not there."""
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"--device={dev} but torch sees no CUDA GPU")
    return dev


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
