"""A non-executing reader for the small pickles that data sets ship (CIFAR's python batches).

l2ood never unpickles a file: :func:`pickle.load` can run any code the file names. This module walks
the opcode stream with :func:`pickletools.genops` (a parser that executes nothing) and interprets a
whitelisted subset into plain Python values:

* structure: ``PROTO``, ``FRAME``, ``STOP``, ``MARK``, ``POP``, ``POP_MARK``, ``EMPTY_DICT``,
  ``EMPTY_LIST``, ``EMPTY_TUPLE``, ``TUPLE``/``TUPLE1``/``TUPLE2``/``TUPLE3``, ``SETITEM(S)``,
  ``APPEND(S)``;
* scalars: ``BINUNICODE``/``SHORT_BINUNICODE``/``BINUNICODE8`` (str), ``BINSTRING``/``SHORT_BINSTRING``
  (Python 2 ``str``, decoded latin-1), ``BINBYTES``/``SHORT_BINBYTES``/``BINBYTES8``/``BYTEARRAY8``,
  ``BININT``/``BININT1``/``BININT2``/``LONG1``/``LONG4``, ``BINFLOAT``, ``NEWTRUE``/``NEWFALSE``/``NONE``;
  for files written with protocol 1 also ``INT``/``LONG`` (INT also encodes bools), ``DICT`` and ``LIST``;
* memo: ``PUT``/``BINPUT``/``LONG_BINPUT``/``MEMOIZE``/``GET``/``BINGET``/``LONG_BINGET``;
* numpy arrays: ``GLOBAL``/``STACK_GLOBAL`` may only name the globals in :data:`ALLOWED_GLOBALS`.
  They are recorded as inert markers — never imported, never called. ``REDUCE`` on a marker and
  ``BUILD`` with numpy's array state ``(version, shape, dtype, is_fortran, raw bytes)`` are
  interpreted here into ``np.frombuffer(raw, dtype).reshape(shape)`` for the dtypes in
  :data:`ALLOWED_DTYPES` (any byte order). This covers arrays written by numpy 1.x/2.x with pickle
  protocols 1–5: ``_reconstruct`` + ``BUILD`` (protocols 1–4) and ``_frombuffer`` with an in-band
  buffer (protocol 5). Protocols 1–2 written by Python 3 store ``bytes`` as
  ``_codecs.encode(text, 'latin1')``; that call is interpreted as ``text.encode('latin-1')``.

Anything else — another opcode, another global, an out-of-band buffer, an object dtype — raises
:class:`~l2ood.data.errors.DataFormatError` naming the opcode or global and its byte offset.
"""

from __future__ import annotations

import io
import math
import pickletools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from .errors import DataFormatError

#: ``(module, name)`` pairs a pickle may name, and what l2ood interprets them as (never imported).
ALLOWED_GLOBALS: dict[tuple[str, str], str] = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",  # numpy 1.x, protocol 5
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",  # numpy 2.x, protocol 5
    ("_codecs", "encode"): "encode",  # bytes under protocol 2 written by Python 3
    ("__builtin__", "bytes"): "bytes",  # b'' under protocol 2
    ("builtins", "bytes"): "bytes",
}

#: dtype codes accepted for arrays (byte order comes from the dtype's pickled state).
ALLOWED_DTYPES = frozenset({"u1", "i4", "i8", "f4", "f8"})

_SCALAR_OPS = frozenset({
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINSTRING", "SHORT_BINSTRING",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
    "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT",
    "INT", "LONG",  # protocol 0/1 decimal ints; genops reads INT "00"/"01" as False/True (protocol-1 bools)
})
_CONSTANTS = {"NEWTRUE": True, "NEWFALSE": False, "NONE": None}


@dataclass(frozen=True)
class _Global:
    """An inert stand-in for a whitelisted global; nothing is imported."""

    module: str
    name: str
    kind: str


class _PendingDtype:
    """``numpy.dtype(code, ...)`` before its ``BUILD`` sets the byte order."""

    def __init__(self, code: str) -> None:
        self.code = code


class _PendingArray:
    """``_reconstruct(ndarray, (0,), b'b')`` before its ``BUILD`` supplies the state."""


class _Refused(Exception):
    """Internal: a refusal, turned into DataFormatError with the source and offset."""


def _as_dtype(x: object) -> np.dtype:
    if isinstance(x, _PendingDtype):  # a dtype without BUILD: native byte order
        return _make_dtype(x.code, "=")
    if isinstance(x, np.dtype):
        return x
    raise _Refused(f"expected a dtype, got {type(x).__name__}")


def _make_dtype(code: str, byteorder: str) -> np.dtype:
    if code not in ALLOWED_DTYPES:
        raise _Refused(f"dtype '{code}' is not allowed (allowed: {', '.join(sorted(ALLOWED_DTYPES))})")
    if byteorder not in ("<", ">", "=", "|"):
        raise _Refused(f"bad dtype byte order {byteorder!r}")
    return np.dtype(code if byteorder == "|" else byteorder + code)


def _as_shape(x: object) -> tuple[int, ...]:
    if not isinstance(x, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in x):
        raise _Refused(f"bad array shape {x!r}")
    return x


def _as_buffer(x: object) -> bytes | bytearray:
    if isinstance(x, str):  # Python 2 str (BINSTRING) read as latin-1
        return x.encode("latin-1")
    if isinstance(x, (bytes, bytearray)):
        return x
    raise _Refused(f"expected raw array bytes, got {type(x).__name__}")


def _array(raw: object, dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    buf = _as_buffer(raw)
    expected = math.prod(shape) * dtype.itemsize
    if len(buf) != expected:
        raise _Refused(f"array {shape} of {dtype} needs {expected} bytes, pickle holds {len(buf)}")
    arr = np.frombuffer(buf, dtype=dtype)
    if not isinstance(buf, bytearray):
        arr = arr.copy()  # writable, independent of the pickle's bytes
    return arr.reshape(shape, order="F" if fortran else "C")


def _reduce(func: object, args: object) -> object:
    if not isinstance(func, _Global):
        raise _Refused(f"REDUCE on a non-callable {type(func).__name__}")
    if not isinstance(args, tuple):
        raise _Refused("REDUCE arguments are not a tuple")
    if func.kind == "reconstruct":
        if len(args) != 3 or not (isinstance(args[0], _Global) and args[0].kind == "ndarray"):
            raise _Refused(f"{func.module}.{func.name} is only accepted for numpy.ndarray")
        return _PendingArray()
    if func.kind == "dtype":
        code = args[0] if args else None
        if isinstance(code, bytes):
            code = code.decode("latin-1")
        if not isinstance(code, str):
            raise _Refused("numpy.dtype needs a type code")
        if code not in ALLOWED_DTYPES:
            raise _Refused(f"dtype '{code}' is not allowed (allowed: {', '.join(sorted(ALLOWED_DTYPES))})")
        return _PendingDtype(code)
    if func.kind == "frombuffer":
        if len(args) != 4 or args[3] not in ("C", "F"):
            raise _Refused("_frombuffer needs (buffer, dtype, shape, order)")
        return _array(args[0], _as_dtype(args[1]), _as_shape(args[2]), args[3] == "F")
    if func.kind == "encode":
        if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
            raise _Refused("_codecs.encode is only accepted as (text, 'latin1')")
        return args[0].encode("latin-1")
    if func.kind == "bytes":
        if args != ():
            raise _Refused("bytes(...) is only accepted without arguments")
        return b""
    raise _Refused(f"global {func.module} {func.name} cannot be called")


def _build(obj: object, state: object) -> object:
    if isinstance(obj, _PendingDtype):
        if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
            raise _Refused("only simple numpy dtypes (no fields, no sub-arrays) are accepted")
        return _make_dtype(obj.code, state[1] if isinstance(state[1], str) else "")
    if isinstance(obj, _PendingArray):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("bad numpy array state")
        _, shape, dtype, fortran, raw = state if len(state) == 5 else (1, *state)
        return _array(raw, _as_dtype(dtype), _as_shape(shape), bool(fortran))
    raise _Refused(f"BUILD on {type(obj).__name__} is not allowed")


def _check_plain(value: object) -> None:
    """Refuse results that still hold markers (a REDUCE/BUILD left unfinished)."""
    todo, seen = [value], set()
    while todo:
        v = todo.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, (_Global, _PendingArray, _PendingDtype)):
            raise _Refused(f"incomplete object {type(v).__name__.lstrip('_')} in the result")
        if isinstance(v, dict):
            todo += [*v.keys(), *v.values()]
        elif isinstance(v, (list, tuple)):
            todo += list(v)


def _pop_mark(stack: list[object], marks: list[int]) -> list[object]:
    if not marks:
        raise _Refused("MARK expected")
    k = marks.pop()
    items = stack[k:]
    del stack[k:]
    return items


def _interpret(ops: Iterator[tuple[pickletools.OpcodeInfo, object, int | None]]) -> tuple[object, int | None]:
    stack: list[object] = []
    marks: list[int] = []
    memo: dict[int, object] = {}
    pending_keys: dict[int, list[int]] = {}  # id of an unfinished marker -> memo keys holding it
    pos: int | None = None
    for op, arg, pos in ops:
        name = op.name
        try:
            if name in _SCALAR_OPS:
                stack.append(arg)
            elif name in _CONSTANTS:
                stack.append(_CONSTANTS[name])
            elif name == "PROTO":
                if not isinstance(arg, int) or arg > 5:
                    raise _Refused(f"unsupported pickle protocol {arg}")
            elif name == "FRAME":
                pass
            elif name == "STOP":
                value = stack.pop()
                _check_plain(value)
                return value, pos
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                _pop_mark(stack, marks)
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name == "DICT":  # protocol 0/1: dict from the key/value pairs above the mark
                items = _pop_mark(stack, marks)
                if len(items) % 2:
                    raise _Refused("DICT needs key/value pairs")
                stack.append({items[k]: items[k + 1] for k in range(0, len(items), 2)})
            elif name == "LIST":
                stack.append(_pop_mark(stack, marks))
            elif name == "TUPLE":
                stack.append(tuple(_pop_mark(stack, marks)))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                k = int(name[-1])
                if len(stack) < k:
                    raise _Refused("stack underflow")
                tup = tuple(stack[-k:])
                del stack[-k:]
                stack.append(tup)
            elif name in ("SETITEM", "SETITEMS"):
                items = stack[-2:] if name == "SETITEM" else _pop_mark(stack, marks)
                if name == "SETITEM":
                    del stack[-2:]
                target = stack[-1]
                if not isinstance(target, dict) or len(items) % 2:
                    raise _Refused(f"{name} needs a dict and key/value pairs")
                for k in range(0, len(items), 2):
                    target[items[k]] = items[k + 1]
            elif name in ("APPEND", "APPENDS"):
                items = [stack.pop()] if name == "APPEND" else _pop_mark(stack, marks)
                target = stack[-1]
                if not isinstance(target, list):
                    raise _Refused(f"{name} needs a list")
                target.extend(items)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                key = len(memo) if name == "MEMOIZE" else int(arg)  # type: ignore[call-overload]
                memo[key] = stack[-1]
                if isinstance(stack[-1], (_PendingArray, _PendingDtype)):
                    pending_keys.setdefault(id(stack[-1]), []).append(key)
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise _Refused(f"memo key {arg} undefined")
                stack.append(memo[int(arg)])
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, gname = str(arg).partition(" ")
                else:
                    g, mod = stack.pop(), stack.pop()
                    if not isinstance(mod, str) or not isinstance(g, str):
                        raise _Refused("STACK_GLOBAL needs two strings")
                    gname, module = g, mod
                kind = ALLOWED_GLOBALS.get((module, gname))
                if kind is None:
                    raise _Refused(f"refused global '{module} {gname}' (only numpy arrays are read)")
                stack.append(_Global(module, gname, kind))
            elif name == "REDUCE":
                args = stack.pop()
                stack.append(_reduce(stack.pop(), args))
            elif name == "BUILD":
                state = stack.pop()
                old = stack[-1]
                new = _build(old, state)
                stack[-1] = new
                for key in pending_keys.pop(id(old), []):  # the memo now holds the finished object
                    memo[key] = new
            else:
                raise _Refused(f"refused opcode {name} at byte {pos}")
        except _Refused as e:
            if " at byte " in str(e):
                raise
            raise _Refused(f"{e} (opcode {name} at byte {pos})") from None
        except IndexError:
            raise _Refused(f"stack underflow at opcode {name} (byte {pos})") from None
        except TypeError as e:
            raise _Refused(f"bad operand for opcode {name} at byte {pos}: {e}") from None
    raise _Refused(f"pickle ended without STOP (byte {pos})")


def safe_load(file: str | Path | bytes | bytearray | BinaryIO | IO[bytes], source: str | None = None) -> object:
    """Read one pickle without executing it; returns dicts/lists/tuples/str/bytes/ints/numpy arrays.

    ``file`` is a path, the pickle's bytes, or a binary file object (read up to the ``STOP``
    opcode). Raises :class:`DataFormatError` for anything outside the whitelist (see module doc).
    """
    src = source or (str(file) if isinstance(file, (str, Path)) else "pickle")
    try:
        if isinstance(file, (str, Path)):
            with open(file, "rb") as f:
                value, _ = _interpret(pickletools.genops(f))
        else:
            data = io.BytesIO(bytes(file)) if isinstance(file, (bytes, bytearray)) else file
            value, _ = _interpret(pickletools.genops(data))
    except _Refused as e:
        raise DataFormatError(f"{src}: {e}; l2ood never unpickles files") from None
    except (ValueError, EOFError, KeyError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        raise DataFormatError(f"{src}: not a readable pickle ({type(e).__name__}: {e})") from None
    return value
