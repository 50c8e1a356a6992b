"""msgpack with numpy arrays, byte-compatible with openpi's `openpi_client.msgpack_numpy`.

An array travels as the map `{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": "<f4", b"shape": [..]}` and a
numpy scalar as `{b"__npgeneric__": True, b"data": <python value>, b"dtype": "<f4"}` (openpi writes bytes keys;
str keys are accepted on decode too). Never pickle: object, complex, void/structured and datetime dtypes are refused
both ways, and a decoded array must have exactly the bytes its dtype and shape say.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import msgpack
import numpy as np

from .protocol import ProtocolError

# bool, signed/unsigned integers, floats, and fixed-width byte/unicode strings: all plain memory, no code.
ALLOWED_DTYPE_KINDS = frozenset("biufSU")


def _check_dtype(dtype: np.dtype, where: str) -> np.dtype:
    if dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(
            "unsupported_dtype",
            f"{where} has dtype {dtype.str!r} (kind {dtype.kind!r}); only bool, int, uint, float and fixed-width "
            "string arrays are accepted (object, complex, structured and datetime dtypes are refused)",
        )
    return dtype


def pack_array(obj: Any) -> Any:
    """msgpack `default` hook: numpy arrays and scalars to their wire maps; anything else unchanged."""
    if isinstance(obj, np.ndarray):
        _check_dtype(obj.dtype, "array")
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype, "scalar")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialize {type(obj).__name__}; send numpy arrays, numbers, strings, lists or dicts")


def _field(obj: dict, name: str) -> Any:
    if name.encode() in obj:
        return obj[name.encode()]
    if name in obj:
        return obj[name]
    raise ProtocolError("malformed_message", f"array map is missing its {name!r} field")


def _decode_dtype(value: Any) -> np.dtype:
    text = value.decode() if isinstance(value, bytes) else value
    if not isinstance(text, str):
        raise ProtocolError("malformed_message", f"array dtype must be a string like '<f4', got {type(text).__name__}")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise ProtocolError("malformed_message", f"array dtype {text!r} is not a numpy dtype ({exc})") from None
    return _check_dtype(dtype, "array")


def _decode_ndarray(obj: dict) -> np.ndarray:
    dtype = _decode_dtype(_field(obj, "dtype"))
    shape = _field(obj, "shape")
    data = _field(obj, "data")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ProtocolError("malformed_message", f"array shape must be a list of non-negative ints, got {shape!r}")
    if not isinstance(data, bytes):
        raise ProtocolError("malformed_message", f"array data must be bytes, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ProtocolError(
            "malformed_message",
            f"array of shape {tuple(shape)} and dtype {dtype.str} needs {expected} bytes, got {len(data)}",
        )
    # A read-only view on the received buffer: no copy on the hot path.
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_generic(obj: dict) -> np.generic:
    dtype = _decode_dtype(_field(obj, "dtype"))
    try:
        return dtype.type(_field(obj, "data"))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError("malformed_message", f"scalar does not fit dtype {dtype.str}: {exc}") from None


def unpack_array(obj: dict) -> Any:
    """msgpack `object_hook`: wire maps back to numpy arrays and scalars; other maps unchanged."""
    if obj.get(b"__ndarray__") or obj.get("__ndarray__"):
        return _decode_ndarray(obj)
    if obj.get(b"__npgeneric__") or obj.get("__npgeneric__"):
        return _decode_generic(obj)
    return obj


Packer = functools.partial(msgpack.Packer, default=pack_array)
packb = functools.partial(msgpack.packb, default=pack_array)


def unpackb(data: bytes) -> Any:
    """Decodes one message. Raises `ProtocolError` ("malformed_message", "unsupported_dtype") on bad input."""
    try:
        return msgpack.unpackb(data, object_hook=unpack_array)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types (ValueError, ExtraData, FormatError, ...)
        raise ProtocolError("malformed_message", f"not a valid msgpack message ({type(exc).__name__}: {exc})") from None
