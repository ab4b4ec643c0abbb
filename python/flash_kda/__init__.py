"""flash_kda: kernels for Kimi Delta Attention (KDA), over the C library libflashkda.

The package is a thin ctypes layer (no compiled Python extension) over include/flashkda.h. It
takes NumPy arrays (CPU) and torch tensors (CPU or CUDA; torch is optional) and returns results
of the same kind. CUDA tensors run on their device, on torch's current stream, with workspace
from torch's caching allocator, without synchronising, so calls can be captured in CUDA graphs.

Entry points:
    prefill, decode            the C library's two operations, every option as a keyword
    decode_layer               a KDA layer's fused decode step: conv, decode, gated RMSNorm
    fwd                        MoonshotAI FlashKDA's flash_kda.fwd (what fla dispatches to)
    chunk_kda                  fla's chunk_kda forward
    fused_recurrent_kda        fla's fused_recurrent_kda
    fused_recurrent_kda_fwd    fla's internal in-place pool decode (what vLLM calls)

Every error raised for bad input derives from flash_kda.FlashKDAError and from ValueError or
TypeError (or another built-in), and names the argument; see flash_kda.errors.
"""

from ._fla import chunk_kda, fused_recurrent_kda, fused_recurrent_kda_fwd
from ._flashkda import fwd
from ._native import LIBRARY_PATH as library_path
from ._native import VERSION as library_version
from ._native import has_cuda, last_kernels
from ._ops import decode, decode_layer, prefill
from .errors import (
    ArgumentTypeError,
    DeviceError,
    DTypeError,
    FlashKDAError,
    InternalError,
    InvalidArgumentError,
    OutOfMemoryError,
    UnsupportedError,
    WorkspaceError,
)

__version__ = "0.2.0"

__all__ = [
    "prefill",
    "decode",
    "decode_layer",
    "fwd",
    "chunk_kda",
    "fused_recurrent_kda",
    "fused_recurrent_kda_fwd",
    "has_cuda",
    "last_kernels",
    "library_path",
    "library_version",
    "FlashKDAError",
    "InvalidArgumentError",
    "DTypeError",
    "ArgumentTypeError",
    "UnsupportedError",
    "WorkspaceError",
    "DeviceError",
    "OutOfMemoryError",
    "InternalError",
]
