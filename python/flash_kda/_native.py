"""The ctypes mirror of include/flashkda.h, and the loaded shared library.

Everything in this module must match include/flashkda.h field for field: the structs below are
passed by pointer to the C library, so a field out of place corrupts every call. When the header
changes, change this file in the same commit (tests/python/test_native.py compiles a small C
program against the header and compares every size and offset with these classes).

The library is found in this order:
  1. the path in the environment variable FLASHKDA_LIBRARY (a development build, say
     build/dev/libflashkda.so);
  2. libflashkda.so next to this file (where `pip install .` puts it).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

# The ABI this module was written against (FKDA_VERSION_MAJOR.FKDA_VERSION_MINOR): a library of
# another major or minor version may have other structs, so loading it is refused.
ABI_VERSION = (0, 2)

# ---- enums (fkda_status, fkda_dtype, fkda_device_type, fkda_gate) --------------------------------

FKDA_OK = 0
FKDA_ERROR_INVALID_ARGUMENT = 1
FKDA_ERROR_UNSUPPORTED = 2
FKDA_ERROR_WORKSPACE = 3
FKDA_ERROR_DEVICE = 4
FKDA_ERROR_OUT_OF_MEMORY = 5
FKDA_ERROR_INTERNAL = 6

FKDA_DTYPE_F32 = 0
FKDA_DTYPE_F16 = 1
FKDA_DTYPE_BF16 = 2
FKDA_DTYPE_I32 = 3
FKDA_DTYPE_I64 = 4
FKDA_DTYPE_BOOL = 5

FKDA_MAX_DIMS = 4
FKDA_TENSOR_READ_ONLY = 1

FKDA_DEVICE_CPU = 0
FKDA_DEVICE_CUDA = 1

FKDA_GATE_NONE = 0
FKDA_GATE_LOWER_BOUND = 1
FKDA_GATE_SOFTPLUS = 2

# C enums are int-sized on every ABI this library targets.
_c_enum = ctypes.c_int


# ---- structs -----------------------------------------------------------------------------------


class Tensor(ctypes.Structure):
    """fkda_tensor: a strided view; data NULL with ndim 0 means "absent"."""

    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", _c_enum),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * FKDA_MAX_DIMS),
        ("stride", ctypes.c_int64 * FKDA_MAX_DIMS),
        ("flags", ctypes.c_uint32),
    ]


class Device(ctypes.Structure):
    """fkda_device."""

    _fields_ = [
        ("type", _c_enum),
        ("index", ctypes.c_int32),
        ("stream", ctypes.c_void_p),
        ("num_threads", ctypes.c_int32),
        ("reference", ctypes.c_int32),
    ]


class Options(ctypes.Structure):
    """fkda_options."""

    _fields_ = [
        ("scale", ctypes.c_double),
        ("gate", _c_enum),
        ("lower_bound", ctypes.c_double),
        ("use_qk_l2norm", ctypes.c_int32),
        ("use_beta_sigmoid", ctypes.c_int32),
        ("allow_neg_eigval", ctypes.c_int32),
        ("state_v_first", ctypes.c_int32),
    ]


class PrefillArgs(ctypes.Structure):
    """fkda_prefill_args."""

    _fields_ = [
        ("q", Tensor),
        ("k", Tensor),
        ("v", Tensor),
        ("g", Tensor),
        ("beta", Tensor),
        ("A_log", Tensor),
        ("dt_bias", Tensor),
        ("cu_seqlens", Tensor),
        ("initial_state", Tensor),
        ("final_state", Tensor),
        ("out", Tensor),
        ("options", Options),
        ("has_initial_state", Tensor),
        ("state_pool", Tensor),
        ("initial_state_indices", Tensor),
        ("final_state_indices", Tensor),
        ("checkpoint_offsets", Tensor),
        ("checkpoint_states", Tensor),
        ("checkpoint_indices", Tensor),
        ("intermediate_states", Tensor),
        ("intermediate_chunk_size", ctypes.c_int32),
    ]


class DecodeArgs(ctypes.Structure):
    """fkda_decode_args."""

    _fields_ = [
        ("q", Tensor),
        ("k", Tensor),
        ("v", Tensor),
        ("g", Tensor),
        ("beta", Tensor),
        ("A_log", Tensor),
        ("dt_bias", Tensor),
        ("cu_seqlens", Tensor),
        ("state_pool", Tensor),
        ("state_indices", Tensor),
        ("num_accepted_tokens", Tensor),
        ("out", Tensor),
        ("options", Options),
    ]


class DecodeLayerArgs(ctypes.Structure):
    """fkda_decode_layer_args."""

    _fields_ = [
        ("mixed_qkv", Tensor),
        ("conv_weight", Tensor),
        ("conv_bias", Tensor),
        ("conv_state", Tensor),
        ("g", Tensor),
        ("beta", Tensor),
        ("A_log", Tensor),
        ("dt_bias", Tensor),
        ("lower_bound", ctypes.c_double),
        ("state_pool", Tensor),
        ("state_indices", Tensor),
        ("num_accepted_tokens", Tensor),
        ("output_gate", Tensor),
        ("norm_weight", Tensor),
        ("norm_eps", ctypes.c_double),
        ("out", Tensor),
        ("scale", ctypes.c_double),
        ("state_v_first", ctypes.c_int32),
    ]


# ---- loading -----------------------------------------------------------------------------------


def library_path() -> str:
    """The path of the shared library this package loads (see the module docstring)."""
    env = os.environ.get("FLASHKDA_LIBRARY")
    if env:
        if not os.path.isfile(env):
            raise ImportError(f"flash_kda: FLASHKDA_LIBRARY={env!r} is not a file")
        return env
    here = Path(__file__).resolve().parent
    for name in ("libflashkda.so", "libflashkda.dylib", "flashkda.dll"):
        candidate = here / name
        if candidate.is_file():
            return str(candidate)
    # A versioned file alone (libflashkda.so.0.2.0) when the unversioned name is missing.
    versioned = sorted(here.glob("libflashkda.so.*"))
    if versioned:
        return str(versioned[0])
    raise ImportError(
        "flash_kda: libflashkda was not found next to the package "
        f"({here}); install the package with `pip install .` from the repository root, "
        "or point FLASHKDA_LIBRARY at a built libflashkda.so"
    )


def _declare(lib: ctypes.CDLL) -> None:
    status = _c_enum
    size_p = ctypes.POINTER(ctypes.c_size_t)
    signatures = {
        "fkda_status_name": (ctypes.c_char_p, [status]),
        "fkda_last_error": (ctypes.c_char_p, []),
        "fkda_last_kernels": (ctypes.c_char_p, []),
        "fkda_version": (ctypes.c_char_p, []),
        "fkda_has_cuda": (ctypes.c_int, []),
        "fkda_default_options": (Options, []),
        "fkda_prefill_workspace_size": (
            status, [ctypes.POINTER(PrefillArgs), ctypes.POINTER(Device), size_p]),
        "fkda_prefill": (
            status, [ctypes.POINTER(PrefillArgs), ctypes.POINTER(Device), ctypes.c_void_p,
                     ctypes.c_size_t]),
        "fkda_decode_workspace_size": (
            status, [ctypes.POINTER(DecodeArgs), ctypes.POINTER(Device), size_p]),
        "fkda_decode": (
            status, [ctypes.POINTER(DecodeArgs), ctypes.POINTER(Device), ctypes.c_void_p,
                     ctypes.c_size_t]),
        "fkda_decode_layer_workspace_size": (
            status, [ctypes.POINTER(DecodeLayerArgs), ctypes.POINTER(Device), size_p]),
        "fkda_decode_layer": (
            status, [ctypes.POINTER(DecodeLayerArgs), ctypes.POINTER(Device), ctypes.c_void_p,
                     ctypes.c_size_t]),
        "fkda_make_tensor": (
            Tensor, [ctypes.c_void_p, _c_enum, ctypes.c_int32, ctypes.POINTER(ctypes.c_int64)]),
        "fkda_dtype_size": (ctypes.c_size_t, [_c_enum]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def _load() -> ctypes.CDLL:
    path = library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(f"flash_kda: cannot load {path}: {e}") from e
    try:
        _declare(lib)
    except AttributeError as e:
        raise ImportError(f"flash_kda: {path} lacks a symbol of flashkda.h: {e}") from e
    version = lib.fkda_version().decode()
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        raise ImportError(f"flash_kda: {path} reports an unreadable version {version!r}") from None
    if (major, minor) != ABI_VERSION:
        raise ImportError(
            f"flash_kda: {path} is version {version}, but this package mirrors the structs of "
            f"{ABI_VERSION[0]}.{ABI_VERSION[1]}.x; rebuild or reinstall so that both match"
        )
    return lib


lib = _load()
LIBRARY_PATH = lib._name
VERSION = lib.fkda_version().decode()


def last_error() -> str:
    """fkda_last_error(): the message of the last failed call on this thread."""
    return lib.fkda_last_error().decode(errors="replace")


def last_kernels() -> str:
    """The GPU kernels the last prefill, decode or decode_layer call on this thread launched, in
    order and separated by spaces; "" after a CPU call (fkda_last_kernels in flashkda.h). For tests
    and profiling: the names follow the kernels and may change between versions."""
    return lib.fkda_last_kernels().decode(errors="replace")


def status_name(status: int) -> str:
    return lib.fkda_status_name(status).decode()


def has_cuda() -> bool:
    """Whether the loaded library contains the CUDA backend."""
    return bool(lib.fkda_has_cuda())
