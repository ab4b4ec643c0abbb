"""test_examples.py: every examples/*.py runs to completion (exit status 0) against this build."""

import os
import pathlib
import re
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


README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
# A code block in the README preceded by one of these comments must be the whole file, or a run of
# consecutive whole lines of it, so that the README shows code that runs as written.
MARKER = re.compile(r"<!-- (the whole of|excerpt of) (\S+) -->\n```\w*\n(.*?)\n```", re.DOTALL)


def test_readme_code_is_the_examples():
    text = README.read_text()
    blocks = MARKER.findall(text)
    assert len(blocks) >= 3, "the README should quote examples/prefill.py and examples/prefill.c"
    root = README.parent
    for kind, name, code in blocks:
        source = (root / name).read_text()
        if kind == "the whole of":
            assert code.strip("\n") == source.strip("\n"), f"README's copy of {name} differs"
        else:
            assert f"\n{code}\n" in f"\n{source}\n", f"README's excerpt of {name} is not in it"
