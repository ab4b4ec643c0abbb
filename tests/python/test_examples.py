"""test_examples.py: every examples/*.py runs to completion (exit status 0) against this build."""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[2] / "examples").glob("*.py"))


def test_examples_exist():
    assert EXAMPLES, "no examples/*.py found"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path):
    # The same interpreter and environment as the tests (FLASHKDA_LIBRARY and PYTHONPATH pass
    # through), so the example loads the library under test.
    result = subprocess.run([sys.executable, str(path)], check=False, capture_output=True,
                            text=True, env=dict(os.environ), cwd=path.parent, timeout=300)
    assert result.returncode == 0, (
        f"{path.name} exited with {result.returncode}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}")
