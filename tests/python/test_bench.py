"""The main job, flash-kda-bench, on a small CPU problem."""

import re
import subprocess
import sys
from pathlib import Path

from flash_kda import bench


def test_bench_cpu_small_problem(capsys):
    assert bench.main(["--device", "cpu", "--T", "80", "--H", "2", "--K", "32", "--V", "16",
                       "--iters", "2", "--warmup", "0", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "device: cpu (1 threads)" in text
    assert "B=1 T=80 H=2 K=32 V=16" in text
    assert re.search(r"fast path: +[\d.]+ ms .* tokens/s", text)
    m = re.search(r"output ([\d.e+-]+), final state ([\d.e+-]+)", text)
    assert m, text
    assert float(m.group(1)) < 1e-5 and float(m.group(2)) < 1e-5


def test_bench_reference_on_a_subset(capsys):
    assert bench.main(["--device", "cpu", "--B", "2", "--T", "20", "--H", "3", "--K", "16",
                       "--V", "16", "--iters", "1", "--ref-heads", "1", "--ref-seqs", "1"]) == 0
    text = capsys.readouterr().out
    assert "heads 0..0 of 3, sequences 0..0 of 2" in text


def test_bench_rejects_bad_sizes(capsys):
    assert bench.main(["--device", "cpu", "--T", "0"]) == 2


def test_console_script_is_installed():
    # `pip install .` puts flash-kda-bench beside the interpreter; skip for a source checkout.
    script = Path(sys.executable).parent / "flash-kda-bench"
    if not script.exists():
        import pytest
        pytest.skip("flash-kda-bench is not installed beside this interpreter")
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "float64 reference" in r.stdout
