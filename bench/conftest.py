"""pytest bench/: the ``--device`` option (default ``cpu``) where the pytest-benchmark entries
run; on a CPU torch gets 1 thread, as the scripts' default."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    try:
        parser.addoption("--device", action="store", default="cpu", help="torch device: cpu (default), cuda, ...")
    except ValueError:  # tests/conftest.py, collected in the same run, adds the same option
        pass


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"--device={dev} but torch sees no CUDA GPU")
    if dev.type == "cpu":
        torch.set_num_threads(1)
    return dev
