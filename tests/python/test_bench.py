"""The main job, flash-kda-bench, on a small CPU problem."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
        pytest.skip("flash-kda-bench is not installed beside this interpreter")
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "float64 reference" in r.stdout


SMALL = ["--device", "cpu", "--T", "70", "--H", "1", "--K", "32", "--V", "16", "--iters", "1",
         "--warmup", "0", "--threads", "1"]


def _one_line_error(capsys, argv, expected):
    """main(argv) returns 2 with one line on stderr containing `expected`, and no traceback."""
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("flash-kda-bench: error: ") and expected in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, expected", [
    (["--threads", "-1"], "argument --threads: must be at least 0, got -1"),
    (["--T", "0"], "argument --T: must be at least 1, got 0"),
    (["--B", "-2"], "argument --B: must be at least 1"),
    (["--H", "0"], "argument --H: must be at least 1"),
    (["--K", "0"], "argument --K: must be at least 1"),
    (["--V", "abc"], "argument --V: expected an integer, got 'abc'"),
    (["--iters", "0"], "argument --iters: must be at least 1"),
    (["--warmup", "-1"], "argument --warmup: must be at least 0"),
    (["--ref-heads", "-1"], "argument --ref-heads: must be at least 0"),
    (["--ref-seqs", "-1"], "argument --ref-seqs: must be at least 0"),
    (["--seed", "-3"], "argument --seed: must be at least 0"),
    (["--dtype", "f64"], "argument --dtype: invalid choice"),
    (["--nope"], "unrecognized arguments: --nope"),
])
def test_bench_bad_option_is_one_line(capsys, argv, expected):
    _one_line_error(capsys, ["--device", "cpu", *argv], expected)


def test_bench_head_dim_the_library_refuses_is_one_line(capsys):
    # K = 300 passes the parser; the library refuses it and its message ends the run.
    _one_line_error(capsys, [*SMALL, "--K", "300"], "q: K = 300; the key head dim must be 1 to 256")


@pytest.mark.parametrize("dtype, tolerance", [("f32", 1e-5), ("f16", 2e-3), ("bf16", 1.5e-2)])
def test_bench_cpu_honours_dtype(capsys, dtype, tolerance):
    if dtype == "bf16":
        pytest.importorskip("ml_dtypes")
    assert bench.main([*SMALL, "--dtype", dtype]) == 0
    text = capsys.readouterr().out
    assert f"{dtype} inputs" in text
    m = re.search(r"output ([\d.e+-]+), final state ([\d.e+-]+)", text)
    assert m, text
    err_out, err_final = float(m.group(1)), float(m.group(2))
    assert err_out < tolerance and err_final < 1e-5
    if dtype != "f32":
        # The output is rounded to the input dtype: its error is far above float32's.
        assert err_out > 1e-5


def test_bench_cpu_default_dtype_is_float32(capsys):
    assert bench.main(SMALL) == 0
    assert "f32 inputs" in capsys.readouterr().out


def test_bench_bf16_without_ml_dtypes_is_refused(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # `import ml_dtypes` raises ImportError
    _one_line_error(capsys, [*SMALL, "--dtype", "bf16"], "--dtype bf16 on the CPU needs ml_dtypes")
