"""Shared fixtures of the Python tests: a fresh seed per test (printed), and random inputs."""

import os
import secrets

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A generator with a fresh seed (FKDA_TEST_SEED fixes it); the seed is printed on failure."""
    seed = int(os.environ.get("FKDA_TEST_SEED", secrets.randbits(32)))
    print(f"seed {seed} ({request.node.name}); rerun with FKDA_TEST_SEED={seed}")
    return np.random.default_rng(seed)
