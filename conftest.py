"""Session-wide seed for every random test (golden, host and cocotb).

`make test SEED=n` or `pytest --seed n` reproduces a run; the seed is printed in the
header. Each test gets its own generator derived from (seed, test id), so one test's
vectors do not depend on which other tests ran -- nor on which pytest-xdist worker runs it:
under ``-n N`` the controller picks the session seed once and hands it to every worker
(``workerinput``), which sets it exactly as a serial run would (``SEED`` in the
environment for the cocotb benches included).
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
    worker = getattr(config, "workerinput", None)
    if worker is not None and "session_seed" in worker:
        seed = int(worker["session_seed"])  # an xdist worker: the controller's seed
    else:
        seed = config.getoption("--seed")
        if seed is None:
            seed = int(os.environ.get("SEED") or int(time.time()) % 100000)
    config._session_seed = seed
    os.environ["SEED"] = str(seed)  # cocotb testbenches read it too
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistSeed(seed), "session-seed-to-workers")


class _XdistSeed:
    """Hands the controller's session seed to every pytest-xdist worker it starts."""

    def __init__(self, seed: int):
        self.seed = seed

    def pytest_configure_node(self, node):
        node.workerinput["session_seed"] = self.seed


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
