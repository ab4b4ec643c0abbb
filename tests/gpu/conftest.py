"""GPU test settings: with FKDA_REQUIRE_FLA=1 a missing fla fails the run instead of skipping tests.

The tests that go through fla (its chunk_kda dispatching to flash_kda, the large prefill cases)
skip when fla cannot be imported, which on a developer's machine is right; on the GPU check
(scripts/gpu_check.sh sets FKDA_REQUIRE_FLA=1) a skip there would let the run report success
without having run them, so there a missing fla is an error: the run stops at configuration with
the import error, and any test or module that still skips for fla is reported as failed.
"""

import importlib
import os

import pytest

REQUIRE_FLA = os.environ.get("FKDA_REQUIRE_FLA") == "1"


def _is_fla_skip(report):
    """True for a skip whose reason names fla (pytest.importorskip("fla...") and the like)."""
    if not report.skipped:
        return False
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return "fla" in reason.split() or "'fla" in reason or "fla." in reason


def pytest_configure(config):
    if not REQUIRE_FLA:
        return
    try:
        importlib.import_module("fla.ops.kda")
    except Exception as e:  # ImportError, or fla failing inside its own import
        raise pytest.UsageError(
            f"FKDA_REQUIRE_FLA=1 but fla cannot be imported ({type(e).__name__}: {e}); carry the "
            "fla wheel (.whl/) or unset FKDA_REQUIRE_FLA to skip the fla tests") from e


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_FLA and _is_fla_skip(report):
        report.outcome = "failed"
        report.longrepr = f"FKDA_REQUIRE_FLA=1: skipped for fla: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_FLA and _is_fla_skip(report):
        report.outcome = "failed"
        report.longrepr = f"FKDA_REQUIRE_FLA=1: skipped for fla: {report.longrepr}"
