"""From NumPy arrays and torch tensors to fkda_tensor descriptions, devices and workspace.

Two kinds of array are accepted:
  - numpy.ndarray: float32, float16, int32, int64, bool / uint8 (flags: 0 false, else true),
    and bfloat16 when the ml_dtypes package provides it (NumPy has no bfloat16 of its own).
    Always on the CPU. A read-only array is described with FKDA_TENSOR_READ_ONLY, so the C
    library refuses it as an output.
  - torch.Tensor (strided): float32, float16, bfloat16, int32, int64, bool / uint8, on the CPU
    or on a CUDA device. torch is never imported by this package unless the caller already
    has (a tensor can only exist once torch is imported), so NumPy alone is enough to use
    flash_kda.

Shapes and strides are passed as they are (strides in elements); the C library validates them
and says what it cannot take. Nothing here reads the contents of a tensor, so a call with CUDA
tensors never synchronises and can be captured in a CUDA graph.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from . import _native
from .errors import ArgumentTypeError, DTypeError, InvalidArgumentError

_NUMPY_DTYPES = {
    np.dtype(np.float32): _native.FKDA_DTYPE_F32,
    np.dtype(np.float16): _native.FKDA_DTYPE_F16,
    np.dtype(np.int32): _native.FKDA_DTYPE_I32,
    np.dtype(np.int64): _native.FKDA_DTYPE_I64,
    np.dtype(np.bool_): _native.FKDA_DTYPE_BOOL,
    np.dtype(np.uint8): _native.FKDA_DTYPE_BOOL,
}

_TORCH_DTYPE_NAMES = {
    "torch.float32": _native.FKDA_DTYPE_F32,
    "torch.float16": _native.FKDA_DTYPE_F16,
    "torch.bfloat16": _native.FKDA_DTYPE_BF16,
    "torch.int32": _native.FKDA_DTYPE_I32,
    "torch.int64": _native.FKDA_DTYPE_I64,
    "torch.bool": _native.FKDA_DTYPE_BOOL,
    "torch.uint8": _native.FKDA_DTYPE_BOOL,
}


def torch_module():
    """The torch module if the caller has imported it, else None (never imports it)."""
    return sys.modules.get("torch")


def is_torch_tensor(obj) -> bool:
    torch = torch_module()
    return torch is not None and isinstance(obj, torch.Tensor)


def is_array(obj) -> bool:
    """A NumPy array or a torch tensor with a shape (a nested tensor has none: describe refuses
    it, naming it)."""
    return isinstance(obj, np.ndarray) or (is_torch_tensor(obj) and not obj.is_nested)


def numpy_bfloat16():
    """ml_dtypes' bfloat16 NumPy dtype, or None when ml_dtypes is not installed."""
    try:
        import ml_dtypes  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


@dataclass(frozen=True)
class Location:
    """Where a tensor's memory is: the CPU (index -1) or CUDA device `index`."""

    kind: str  # "cpu" or "cuda"
    index: int = -1

    def __str__(self) -> str:
        return self.kind if self.kind == "cpu" else f"cuda:{self.index}"


CPU = Location("cpu")


def _fill(t: _native.Tensor, name: str, data: int, dtype: int, shape, strides, flags: int) -> None:
    if len(shape) > _native.FKDA_MAX_DIMS:
        raise InvalidArgumentError(
            f"{name}: has {len(shape)} dimensions; flash_kda tensors have at most "
            f"{_native.FKDA_MAX_DIMS}")
    if 0 in shape:
        # No element is addressed, so any strides describe the same (empty) tensor; NumPy and
        # torch give odd ones (0, say) to empty arrays, which the C checks would refuse.
        strides, step = [0] * len(shape), 1
        for i in reversed(range(len(shape))):
            strides[i] = step
            step *= max(int(shape[i]), 1)
    t.data = data or None
    t.dtype = dtype
    t.ndim = len(shape)
    for i, (n, s) in enumerate(zip(shape, strides)):
        t.shape[i] = int(n)
        t.stride[i] = int(s)
    t.flags = flags


def describe(obj, name: str, t: _native.Tensor) -> Location:
    """Fills `t` with a description of `obj` (a NumPy array or torch tensor); returns where it is.

    Raises TypeError for an object that is neither, or a dtype flash_kda does not know, and
    ValueError for a tensor it cannot describe (more than 4 dimensions, odd device or layout).
    """
    if isinstance(obj, np.ndarray):
        if not obj.dtype.isnative:
            raise DTypeError(f"{name}: NumPy dtype {obj.dtype.str} is not in native byte order; "
                             "convert it with .astype(x.dtype.newbyteorder('='))")
        dtype = _NUMPY_DTYPES.get(obj.dtype)
        if dtype is None:
            if obj.dtype.name == "bfloat16":
                dtype = _native.FKDA_DTYPE_BF16
            else:
                raise DTypeError(
                    f"{name}: NumPy dtype {obj.dtype} is not supported; expected float32, float16, "
                    "bfloat16 (ml_dtypes), int32, int64 or bool")
        itemsize = obj.itemsize
        strides = []
        for s in obj.strides:
            if s % itemsize:
                raise InvalidArgumentError(
                    f"{name}: NumPy byte stride {s} is not a multiple of the "
                    f"{itemsize}-byte element")
            strides.append(s // itemsize)
        flags = 0 if obj.flags.writeable else _native.FKDA_TENSOR_READ_ONLY
        _fill(t, name, obj.ctypes.data, dtype, obj.shape, strides, flags)
        return CPU
    if is_torch_tensor(obj):
        dtype = _TORCH_DTYPE_NAMES.get(str(obj.dtype))
        if dtype is None:
            raise DTypeError(
                f"{name}: torch dtype {obj.dtype} is not supported; expected float32, float16, "
                "bfloat16, int32, int64 or bool")
        loc = _torch_location(obj, name)
        if obj.is_neg():
            # A lazily negated view (such as z.conj().imag): its memory holds minus its values.
            raise InvalidArgumentError(
                f"{name}: is a negated view of its memory (torch's neg bit); pass "
                f"{name}.resolve_neg()")
        _fill(t, name, obj.data_ptr(), dtype, tuple(obj.shape), obj.stride(), 0)
        return loc
    raise ArgumentTypeError(
        f"{name}: expected a NumPy array or a torch tensor, got {type(obj).__module__}."
        f"{type(obj).__qualname__}")


def _torch_location(obj, name: str) -> Location:
    """Where a torch tensor is; ValueError for one that is not a plain strided tensor on the CPU
    or a CUDA device."""
    # A nested tensor's layout reads "strided" too, but it has neither a shape nor strides.
    if obj.is_nested or str(obj.layout) != "torch.strided":
        layout = "nested" if obj.is_nested else obj.layout
        raise InvalidArgumentError(
            f"{name}: torch layout {layout} is not supported; expected strided")
    dev = obj.device
    if dev.type == "cpu":
        return CPU
    if dev.type == "cuda":
        return Location("cuda", dev.index if dev.index is not None else 0)
    raise InvalidArgumentError(f"{name}: device {dev} is not supported; expected cpu or cuda")


_TORCH_INTEGERS = {f"torch.{s}int{n}" for s in ("", "u") for n in (8, 16, 32, 64)}


def host_integers(obj, name: str) -> np.ndarray:
    """The values of a torch tensor of integers as a NumPy array, for the few that the Python
    layer reads (a copy from a CUDA device, which waits for it). DTypeError for other dtypes,
    ValueError for a tensor describe() refuses for its layout or device."""
    _torch_location(obj, name)
    if str(obj.dtype) not in _TORCH_INTEGERS:
        raise DTypeError(f"{name}: dtype {obj.dtype} is not accepted; expected int64 or int32")
    return obj.detach().cpu().numpy()


def merge_leading(obj, name: str):
    """A 5-D array [A, C, ...] as a 4-D view [A * C, ...] of the same memory (how the C library
    takes the 5-D state arrays); other arrays are returned as they are. ValueError when the two
    leading dimensions cannot be merged without a copy (an output must be written in place)."""
    if not is_array(obj) or obj.ndim != 5:
        return obj
    shape = (int(obj.shape[0]) * int(obj.shape[1]),) + tuple(int(n) for n in obj.shape[2:])
    if is_torch_tensor(obj):
        try:
            return obj.view(shape)
        except RuntimeError:
            pass
    else:
        view = obj.view()
        try:
            view.shape = shape
            return view
        except AttributeError:
            pass
    raise InvalidArgumentError(
        f"{name}: its first two dimensions {list(obj.shape[:2])} cannot be merged into one "
        "without a copy (make the array contiguous in them)")


def resolve_location(named_locations) -> Location:
    """The one device of a call, from (name, Location) pairs; ValueError when they disagree."""
    first_name, first = None, None
    for name, loc in named_locations:
        if first is None:
            first_name, first = name, loc
        elif loc != first:
            if loc.kind != first.kind:
                raise InvalidArgumentError(
                    f"{name}: is on {loc} but {first_name} is on {first}; mixed CPU and CUDA "
                    "tensors are not supported (move them to one device)")
            raise InvalidArgumentError(
                f"{name}: is on {loc} but {first_name} is on {first}; every tensor of a call must "
                "be on the same CUDA device")
    return first if first is not None else CPU


# ---- outputs and scratch in the caller's kind of array -------------------------------------------


def dtype_of(obj):
    return obj.dtype


def empty(like, shape, dtype=None):
    """An uninitialised contiguous array of `shape`, of the same kind and device as `like`.

    dtype: a NumPy dtype, a torch dtype, or the string "float32" (either kind).
    """
    if is_torch_tensor(like):
        torch = torch_module()
        if dtype is None:
            dtype = like.dtype
        elif dtype == "float32":
            dtype = torch.float32
        return torch.empty(tuple(shape), dtype=dtype, device=like.device)
    if dtype is None:
        dtype = like.dtype
    return np.empty(tuple(shape), dtype=np.float32 if dtype == "float32" else dtype)


def zeros(like, shape, dtype=None):
    if is_torch_tensor(like):
        out = empty(like, shape, dtype)
        out.zero_()
        return out
    out = empty(like, shape, dtype)
    out.fill(0)
    return out


def float32_copy(x, like):
    """A new contiguous float32 copy of x, of the kind of `like` (on the device of x for torch)."""
    if is_torch_tensor(x):
        torch = torch_module()
        out = torch.empty(tuple(x.shape), dtype=torch.float32, device=x.device)
        out.copy_(x)
        return out
    if isinstance(x, np.ndarray):
        if is_torch_tensor(like):
            torch = torch_module()
            host = np.array(x, dtype=np.float32, order="C", copy=True)
            return torch.from_numpy(host).to(like.device)
        return np.array(x, dtype=np.float32, order="C", copy=True)
    raise ArgumentTypeError(
        f"expected a NumPy array or a torch tensor, got {type(x).__qualname__}")


# ---- devices and workspace -----------------------------------------------------------------------

_WORKSPACE_ALIGNMENT = 256


def make_device(loc: Location, reference: bool, num_threads: int) -> _native.Device:
    dev = _native.Device()
    if loc.kind == "cuda":
        torch = torch_module()
        dev.type = _native.FKDA_DEVICE_CUDA
        dev.index = loc.index
        # torch's current stream on that device: the kernels are ordered with the caller's own
        # work and recorded by torch.cuda.graph capture. Reading the handle does not synchronise.
        dev.stream = torch.cuda.current_stream(loc.index).cuda_stream or None
    else:
        dev.type = _native.FKDA_DEVICE_CPU
        dev.index = 0
        dev.stream = None
    dev.num_threads = int(num_threads)
    dev.reference = 1 if reference else 0
    return dev


def workspace(loc: Location, nbytes: int):
    """(holder, pointer) for nbytes of workspace aligned to 256 bytes on `loc`.

    On CUDA the memory comes from torch's caching allocator on the current stream, so it is
    graph-capture safe and is handed back to torch (not freed) when the holder goes away.
    The caller keeps the holder alive until the C call has returned.
    """
    if nbytes == 0:
        return None, None
    if loc.kind == "cuda":
        torch = torch_module()
        device = torch.device("cuda", loc.index)
        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        ptr = buf.data_ptr()
        if ptr % _WORKSPACE_ALIGNMENT:
            buf = torch.empty(nbytes + _WORKSPACE_ALIGNMENT, dtype=torch.uint8, device=device)
            ptr = buf.data_ptr()
            ptr += -ptr % _WORKSPACE_ALIGNMENT
        return buf, ptr
    buf = np.empty(nbytes + _WORKSPACE_ALIGNMENT, dtype=np.uint8)
    ptr = buf.ctypes.data
    ptr += -ptr % _WORKSPACE_ALIGNMENT
    return buf, ptr
