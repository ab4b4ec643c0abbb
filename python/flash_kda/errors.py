"""Exceptions raised by flash_kda, and the mapping from the C library's status codes.

Every exception that flash_kda raises for bad input is a FlashKDAError: those of the C library
carry its message verbatim (it names the argument and what was expected), those of the Python
layer name the argument the same way; the status code is in `.status`. Each is also a built-in
exception, so that callers can catch what they would catch elsewhere:

    status                        exception             also a
    FKDA_ERROR_INVALID_ARGUMENT   InvalidArgumentError  ValueError
      ... about a dtype           DTypeError            TypeError
      ... of the wrong kind       ArgumentTypeError     TypeError
    FKDA_ERROR_UNSUPPORTED        UnsupportedError      ValueError and NotImplementedError
    FKDA_ERROR_WORKSPACE          WorkspaceError        ValueError
    FKDA_ERROR_DEVICE             DeviceError           RuntimeError
    FKDA_ERROR_OUT_OF_MEMORY      OutOfMemoryError      MemoryError
    FKDA_ERROR_INTERNAL           InternalError         RuntimeError

An invalid argument is a dtype problem when the C message reads "<name>: dtype ...", which is
how the library words every dtype check (the Python layer raises DTypeError too, for a NumPy
dtype the library has no code for, float64 say). ArgumentTypeError is raised by the Python layer
only: an argument that is not an array, a number or a bool, a required one missing, or a keyword
that neither flash_kda nor fla knows (a typo must not be ignored silently). UnsupportedError
means "valid, but this device cannot run this combination (yet)": the Python layer raises it
too, for fla options that flash_kda does not implement. The Python layer's ValueErrors are
InvalidArgumentError, so that `except flash_kda.FlashKDAError` catches every bad input.
"""

from __future__ import annotations

import difflib
import re

from . import _native


class FlashKDAError(Exception):
    """Base class of every error flash_kda raises for bad input (C library and Python layer)."""

    status: int = -1

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self)


class InvalidArgumentError(FlashKDAError, ValueError):
    status = _native.FKDA_ERROR_INVALID_ARGUMENT


class DTypeError(FlashKDAError, TypeError):
    status = _native.FKDA_ERROR_INVALID_ARGUMENT


class ArgumentTypeError(FlashKDAError, TypeError):
    status = _native.FKDA_ERROR_INVALID_ARGUMENT


class UnsupportedError(FlashKDAError, ValueError, NotImplementedError):
    status = _native.FKDA_ERROR_UNSUPPORTED


class WorkspaceError(FlashKDAError, ValueError):
    status = _native.FKDA_ERROR_WORKSPACE


class DeviceError(FlashKDAError, RuntimeError):
    status = _native.FKDA_ERROR_DEVICE


class OutOfMemoryError(FlashKDAError, MemoryError):
    status = _native.FKDA_ERROR_OUT_OF_MEMORY


class InternalError(FlashKDAError, RuntimeError):
    status = _native.FKDA_ERROR_INTERNAL


_BY_STATUS = {
    _native.FKDA_ERROR_INVALID_ARGUMENT: InvalidArgumentError,
    _native.FKDA_ERROR_UNSUPPORTED: UnsupportedError,
    _native.FKDA_ERROR_WORKSPACE: WorkspaceError,
    _native.FKDA_ERROR_DEVICE: DeviceError,
    _native.FKDA_ERROR_OUT_OF_MEMORY: OutOfMemoryError,
    _native.FKDA_ERROR_INTERNAL: InternalError,
}

# "q: dtype float64 is not accepted; ...", "k: dtype float16 differs from q's float32"
_DTYPE_MESSAGE = re.compile(r"^[\w.\[\]]+: dtype ")


def error_for_status(status: int, message: str) -> FlashKDAError:
    """The exception for a non-OK status of the C library and its message."""
    if status == _native.FKDA_ERROR_INVALID_ARGUMENT and _DTYPE_MESSAGE.match(message):
        return DTypeError(message, status)
    cls = _BY_STATUS.get(status)
    if cls is None:
        return InternalError(f"unknown status {status}: {message}", status)
    return cls(message, status)


def reject_unknown_keywords(function: str, unknown, known) -> None:
    """Raises ArgumentTypeError naming the first of `unknown` (keyword names), if any.

    known: the keywords the function takes, searched for a close spelling to suggest.
    """
    unknown = list(unknown)
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    more = f" (and {len(unknown) - 1} more: {', '.join(map(repr, unknown[1:]))})" \
        if len(unknown) > 1 else ""
    raise ArgumentTypeError(f"{name}: is not a keyword of {function}{more}{hint}")


def check(status: int) -> None:
    """Raises the mapped exception unless status is FKDA_OK (reads the thread's last error)."""
    if status != _native.FKDA_OK:
        raise error_for_status(status, _native.last_error())
