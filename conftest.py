"""Session-wide seed for every random test (golden, host and cocotb).

`make test SEED=n` or `pytest --seed n` reproduces a run; the seed is printed in the
header. Each test gets its own generator derived from (seed, test id), so one test's
vectors do not depend on which other tests ran.
"""

import os
import time
import zlib

import numpy as np
import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--seed", type=int, default=None, help="seed for random tests (default: time-based)"
    )


def pytest_configure(config):
    seed = config.getoption("--seed")
    if seed is None:
        seed = int(os.environ.get("SEED") or int(time.time()) % 100000)
    config._session_seed = seed
    os.environ["SEED"] = str(seed)  # cocotb testbenches read it too


def pytest_report_header(config):
    return f"random seed: {config._session_seed} (reproduce with SEED={config._session_seed})"


@pytest.fixture
def seed(request) -> int:
    return request.config._session_seed


@pytest.fixture
def rng(request, seed) -> np.random.Generator:
    """A generator for this test: reproducible from the printed session seed."""
    return np.random.default_rng([seed, zlib.crc32(request.node.nodeid.encode())])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # printed even with -q, where the report header is not
    terminalreporter.write_line(
        f"random seed: {config._session_seed} (reproduce with SEED={config._session_seed})"
    )
