"""Shared fixtures of the Python tests: a fresh seed per test (printed), and random inputs.

Optional requirements: a test module that needs torch or ml_dtypes skips itself where they are
not installed (a user's plain `pytest`). Where they must be there (scripts/run_tests.sh, CI),
FKDA_REQUIRE_TORCH=1 / FKDA_REQUIRE_ML_DTYPES=1 turn a missing one into an error that stops
the run, so that its tests can never silently drop out.
"""

import importlib
import os
import secrets

import numpy as np
import pytest

REQUIRED_BY_ENV = {"FKDA_REQUIRE_TORCH": "torch", "FKDA_REQUIRE_ML_DTYPES": "ml_dtypes"}


def pytest_configure(config):
    for variable, module in REQUIRED_BY_ENV.items():
        if os.environ.get(variable, "0") not in ("", "0"):
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise pytest.UsageError(
                    f"{variable} is set, but {module} cannot be imported ({e}); install it "
                    f"(pip install {module}) or unset {variable} to let its tests skip") from e


@pytest.fixture
def rng(request):
    """A generator with a fresh seed (FKDA_TEST_SEED fixes it); the seed is printed on failure."""
    seed = int(os.environ.get("FKDA_TEST_SEED", secrets.randbits(32)))
    print(f"seed {seed} ({request.node.name}); rerun with FKDA_TEST_SEED={seed}")
    return np.random.default_rng(seed)
