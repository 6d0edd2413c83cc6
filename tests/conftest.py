import os
import tempfile

import pytest
import torch

# Operator matrices, norms and warm starts are cached on disk; the test session gets its own cache
# (shared by all tests, so a matrix is built once) instead of the user's ~/.cache/ctdip.
os.environ.setdefault("CTDIP_CACHE_DIR", tempfile.mkdtemp(prefix="ctdip-test-cache-"))

# Tests are small; one or two threads keep them quick and reproducible on CI's 2 cores.
torch.set_num_threads(int(os.environ.get("CTDIP_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that changes torch's thread count does not leak it into the tests after it: training
    trajectories (and so measured PSNRs) depend on the summation order, which depends on the
    thread count."""
    n = torch.get_num_threads()
    yield
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread():
    """For tiny trainings: one torch thread for the module (avoids OpenMP oversubscription on a
    shared 2-core runner), restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def run_cli(tmp_path):
    """Run ``ctdip`` in-process: returns (exit_code, stdout, stderr)."""
    from ctdip.cli.main import main

    def _run(*args, capsys=None):
        return main([str(a) for a in args])

    return _run
