"""Shared fixtures: hypothesis profiles and the ISA variants of this machine.

Profiles (``BLOCKSPARSE_HYPOTHESIS_PROFILE``): ``dev`` (fast), ``ci``
(derandomized, no deadline; the default under ``CI``), ``nightly`` (many
examples).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import blocksparse

settings.register_profile("dev", max_examples=30, deadline=None)
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("BLOCKSPARSE_HYPOTHESIS_PROFILE",
                                     "ci" if os.environ.get("CI") else "dev"))

ISAS = blocksparse.available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    """Every ISA variant this CPU and build support, forced in turn."""
    with blocksparse.isa_context(request.param):
        yield request.param


@pytest.fixture(params=[1, 2])
def num_threads(request):
    """Run the test with 1 and with 2 kernel threads.

    Small products normally stay on one thread; the fixture turns that off
    so the 2-thread split really runs on the test's small matrices.
    """
    saved = blocksparse.get_num_threads()
    blocksparse.set_num_threads(request.param)
    saved_work = blocksparse._kernels.set_min_work_per_thread(0)
    try:
        yield request.param
    finally:
        blocksparse._kernels.set_min_work_per_thread(saved_work)
        blocksparse.set_num_threads(saved)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# ---- safety summary: lines printed after the test results, also on success ----------------
# The fuzz, ISA-environment and sanitizer modules report their counts here so that they
# appear in the CI log of a passing run.
SAFETY_SUMMARY = {}  # key -> line, or a callable returning it at the end of the run


def pytest_terminal_summary(terminalreporter):
    if SAFETY_SUMMARY:
        terminalreporter.write_sep("-", "blocksparse safety summary")
        for key in sorted(SAFETY_SUMMARY):
            line = SAFETY_SUMMARY[key]
            terminalreporter.write_line(line() if callable(line) else line)


@pytest.fixture(scope="session")
def safety_summary():
    """The dict behind the "blocksparse safety summary" section."""
    return SAFETY_SUMMARY
