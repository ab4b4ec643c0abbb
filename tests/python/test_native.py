"""The ctypes mirror of flashkda.h: struct layouts, helper functions, library lookup."""

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import flash_kda
from flash_kda import _native

REPO = Path(__file__).resolve().parents[2]
HEADER_DIR = REPO / "include"

STRUCTS = {
    "fkda_tensor": _native.Tensor,
    "fkda_device": _native.Device,
    "fkda_options": _native.Options,
    "fkda_prefill_args": _native.PrefillArgs,
    "fkda_decode_args": _native.DecodeArgs,
}


@pytest.mark.skipif(not (HEADER_DIR / "flashkda.h").is_file(), reason="flashkda.h not found")
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_struct_layouts_match_the_header(tmp_path):
    # A C program prints sizeof and every offsetof of the header's structs; ctypes must agree.
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include \"flashkda.h\"",
             "int main(void) {"]
    for cname, cls in STRUCTS.items():
        lines.append(f'printf("{cname} size %zu\\n", sizeof({cname}));')
        for field, _ in cls._fields_:
            lines.append(f'printf("{cname} {field} %zu\\n", offsetof({cname}, {field}));')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-std=c11", "-I", str(HEADER_DIR), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    seen = 0
    for line in out.splitlines():
        cname, what, value = line.split()
        cls = STRUCTS[cname]
        expected = ctypes.sizeof(cls) if what == "size" else getattr(cls, what).offset
        assert int(value) == expected, f"{cname}.{what}: C says {value}, ctypes says {expected}"
        seen += 1
    assert seen == sum(len(c._fields_) + 1 for c in STRUCTS.values())


def test_make_tensor_round_trip():
    # fkda_make_tensor returns an fkda_tensor by value: its fields land where ctypes reads them.
    shape = (ctypes.c_int64 * 3)(2, 3, 5)
    t = _native.lib.fkda_make_tensor(ctypes.c_void_p(0x1000), _native.FKDA_DTYPE_BF16, 3, shape)
    assert t.data == 0x1000
    assert t.dtype == _native.FKDA_DTYPE_BF16
    assert t.ndim == 3
    assert list(t.shape[:3]) == [2, 3, 5]
    assert list(t.stride[:3]) == [15, 5, 1]
    assert t.flags == 0


def test_default_options_and_dtype_sizes():
    o = _native.lib.fkda_default_options()
    assert (o.scale, o.gate, o.use_qk_l2norm, o.use_beta_sigmoid, o.allow_neg_eigval,
            o.state_v_first) == (0.0, _native.FKDA_GATE_NONE, 0, 0, 0, 0)
    sizes = [_native.lib.fkda_dtype_size(d) for d in range(6)]
    assert sizes == [4, 2, 2, 4, 8, 1]  # ... and FKDA_DTYPE_BOOL, one byte


def test_version_and_status_names():
    # The library's major.minor is the ABI the package was written against (and its own version).
    major, minor = (int(x) for x in flash_kda.library_version.split(".")[:2])
    assert (major, minor) == _native.ABI_VERSION
    assert flash_kda.__version__.split(".")[:2] == [str(major), str(minor)]
    assert _native.status_name(_native.FKDA_ERROR_INVALID_ARGUMENT) == "invalid argument"
    assert isinstance(flash_kda.has_cuda(), bool)


def _import_in_subprocess(env):
    code = "import flash_kda, sys; sys.stdout.write(flash_kda.library_path)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_library_env_var_is_used():
    env = dict(os.environ, FLASHKDA_LIBRARY=flash_kda.library_path)
    r = _import_in_subprocess(env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == flash_kda.library_path


def test_library_env_var_that_is_missing_fails_clearly(tmp_path):
    env = dict(os.environ, FLASHKDA_LIBRARY=str(tmp_path / "nope.so"))
    r = _import_in_subprocess(env)
    assert r.returncode != 0
    assert "FLASHKDA_LIBRARY" in r.stderr and "nope.so" in r.stderr


def test_torch_is_not_imported_by_the_package():
    code = "import flash_kda, sys; sys.stdout.write(str('torch' in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "False"


def test_public_api():
    for name in ("prefill", "decode", "fwd", "chunk_kda", "fused_recurrent_kda",
                 "fused_recurrent_kda_fwd", "last_kernels"):
        assert callable(getattr(flash_kda, name))


def test_last_kernels_is_empty_after_a_cpu_call():
    # fkda_last_kernels: a CPU call launches nothing (the GPU tests check the names of launches).
    from helpers import log_decay, make_inputs
    rng = np.random.default_rng(0)
    x = make_inputs(rng, T=5)
    out = np.full(x["v"].shape, np.nan, dtype=np.float32)
    flash_kda.prefill(x["q"], x["k"], x["v"], log_decay(rng, x["g"].shape), x["beta"], out=out)
    assert np.isfinite(out).all()
    assert flash_kda.last_kernels() == ""


def test_numpy_is_the_only_dependency_imported():
    # A fresh interpreter: every top-level module `import flash_kda` brings in is either the
    # standard library's, NumPy's or the package's own (ml_dtypes and torch only when used).
    code = ("import sys; before = set(sys.modules); import flash_kda; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "sys.stdout.write(' '.join(sorted(n for n in new "
            "if n not in sys.stdlib_module_names)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == {"flash_kda", "numpy"}
