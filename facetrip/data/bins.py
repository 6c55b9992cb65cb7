"""The ``.bin`` verification sets of the face literature (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW as
insightface distributes them), read without running anything (scored by
:mod:`facetrip.metrics.bins`).

A ``.bin`` is a pickle of ``(images, issame)``: ``images`` a list of ``2 P`` encoded images
(JPEG/PNG bytes), consecutive images forming pair ``i = (2 i, 2 i + 1)``, and ``issame`` ``P``
flags (a list of bools, or a numpy bool array in some files).

``pickle.load`` runs whatever a file holds; :func:`read_bin` unpickles with an allow-list:
bytes, lists, tuples, bools, ints, and numpy arrays of dtype bool (``_reconstruct`` /
``_frombuffer`` under their numpy 1 and 2 module names, ``ndarray``, ``dtype`` restricted to
bool). numpy's own dtype and array objects never take state from the file: tokens stand for
them, check bool's dtype state, and build the array from its raw bytes (0 and 1 only).
Anything else is one :class:`~facetrip.errors.UserError` line, before it is called.
"""

from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facetrip.data.decode import ImageError
from facetrip.data.transforms import Preprocess
from facetrip.errors import UserError

_BOOL = np.dtype(np.bool_)


# --------------------------------------------------------------------------- safe unpickling


class _Refused(pickle.UnpicklingError):
    """A global (or an argument) outside the allow-list."""


class _BoolDtype:
    """Stands for numpy's bool dtype while unpickling. numpy's own dtype would take its state
    (byte order, fields, flags...) from the file through BUILD, and flags can make a dtype
    claim to hold Python objects; this token only checks that the state is bool's own."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] in (3, 4)
                and state[1] in ("|", "=", b"|", b"=") and state[2:] == (None, None, None,
                                                                         -1, -1, 0)):
            raise _Refused("a numpy dtype state other than bool's")


class _BoolArray:
    """Stands for a numpy array while unpickling: BUILD hands it numpy's array state
    ``(version, shape, dtype, fortran, raw bytes)``; it keeps :attr:`array`, a bool array made
    from the raw bytes alone. No numpy object ever receives state from the file."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _Refused("a numpy array state of another form")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _BoolDtype):
            raise _Refused("a numpy array of a dtype other than bool")
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)
                and isinstance(raw, bytes) and len(raw) == int(np.prod(shape))):
            raise _Refused("a numpy array state whose shape and data disagree")
        flat = np.frombuffer(raw, dtype=np.uint8)
        if flat.size and flat.max() > 1:
            raise _Refused("bool array bytes other than 0 and 1")
        self.array = flat.astype(bool).reshape(shape, order="F" if fortran else "C")


def _dtype(name: Any, align: Any = False, copy: Any = True) -> _BoolDtype:
    """``numpy.dtype`` for bool only (``'b1'``, as numpy pickles it), as a token."""
    if name not in ("b1", "?", "bool", b"b1", b"?"):
        raise _Refused(f"numpy dtype {name!r} (only bool arrays are admitted)")
    return _BoolDtype()


def _reconstruct(subtype: Any, shape: Any, dtype_char: Any) -> _BoolArray:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: a token that BUILD fills."""
    if subtype is not _NDARRAY:
        raise _Refused(f"_reconstruct of {subtype!r}")
    return _BoolArray()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 ``_frombuffer`` for bool arrays."""
    if not isinstance(dtype, _BoolDtype):
        raise _Refused(f"_frombuffer of dtype {dtype!r}")
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise _Refused("_frombuffer shape")
    if order not in ("C", "F"):
        raise _Refused("_frombuffer order")
    flat = np.frombuffer(bytes(buffer), dtype=np.uint8)
    if flat.size != int(np.prod(shape)) or (flat.size and flat.max() > 1):
        raise _Refused("_frombuffer data other than a bool array of that shape")
    return flat.astype(bool).reshape(shape, order=order)


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(text, 'latin1')``: how protocol 0-2 pickles from Python 3 hold bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode other than text to latin1")
    return codecs.encode(text, "latin1")


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` (only :func:`_reconstruct` accepts it; calling it fails)."""


_NDARRAY = _NdarrayToken()
_ALLOWED = {
    ("numpy", "dtype"): _dtype,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1,
}


class SafeUnpickler(pickle.Unpickler):
    """Bytes, text, lists, tuples, bools, ints, floats, None and numpy bool arrays; any
    other global is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("persistent id")


def safe_load(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler` (Python 2 strings as bytes).

    Raises:
        pickle.UnpicklingError: a refused global or a malformed pickle (and what a malformed
            stream raises: ``EOFError``, ``ValueError``, ``TypeError``...).
    """
    return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


# --------------------------------------------------------------------------- .bin sets


@dataclass(frozen=True)
class VerificationBin:
    """A ``.bin`` set: ``images[2 i], images[2 i + 1]`` is pair ``i``, ``issame (P,)`` bool."""

    path: Path
    images: list[bytes]
    issame: np.ndarray

    @property
    def name(self) -> str:
        """``lfw`` for ``lfw.bin``: its key in metrics.json (``bins.<name>``)."""
        return self.path.stem

    def __len__(self) -> int:
        return int(self.issame.size)


def read_bin(path: str | Path) -> VerificationBin:
    """Read a ``.bin`` set safely (see the module doc).

    Raises:
        UserError: (one line) the file is missing, is not a pickle of ``(images, issame)`` of
            matching lengths, or holds anything outside the allow-list; nothing is run.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        content = safe_load(data)
    except _Refused as exc:
        raise UserError(f"{path} is not a plain .bin set: it holds {exc}, which is refused "
                        "(nothing in it was run)") from None
    except Exception as exc:  # noqa: BLE001 - a malformed pickle raises many types
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not a readable .bin set: {detail}") from None
    return _as_bin(path, content)


def _as_bin(path: Path, content: Any) -> VerificationBin:
    """Check the unpickled ``(images, issame)`` and convert it."""
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise UserError(f"{path} is not a .bin set: expected (images, issame), got "
                        f"{type(content).__name__}")
    images, issame = content
    if isinstance(issame, _BoolArray):  # numpy's array pickle, rebuilt by the token
        if issame.array is None:
            raise UserError(f"{path} is not a .bin set: its issame array has no data")
        issame = issame.array
    if not isinstance(images, (list, tuple)) or not all(isinstance(b, bytes) for b in images):
        raise UserError(f"{path} is not a .bin set: its images must be a list of bytes")
    if isinstance(issame, np.ndarray):
        if issame.dtype != _BOOL or issame.dtype.fields is not None or issame.ndim != 1:
            raise UserError(f"{path}: issame must be a 1-D bool array, got {issame.dtype} "
                            f"{issame.shape}")
        flags = issame.copy()
    elif isinstance(issame, (list, tuple)) and all(
            isinstance(v, (bool, int)) and v in (0, 1) for v in issame):
        flags = np.asarray(issame, dtype=bool).reshape(-1)
    else:
        raise UserError(f"{path} is not a .bin set: issame must be a list of bools")
    if len(images) != 2 * flags.size or flags.size == 0:
        raise UserError(f"{path}: {len(images)} images for {flags.size} pairs (need two per "
                        "pair, at least one pair)")
    return VerificationBin(path, list(images), flags)


class BinImages(torch.utils.data.Dataset):
    """Item ``i``: ``(uint8 (3, S, S) image, 1)``, or a blank image and 0 when it does not
    decode (its pairs are left out)."""

    def __init__(self, images: list[bytes], preprocess: Preprocess) -> None:
        self.images, self.preprocess = images, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return self.preprocess.load_bytes(self.images[i]), 1
        except ImageError:
            size = self.preprocess.size
            return torch.zeros(3, size, size, dtype=torch.uint8), 0


def read_bins(paths: list[str | Path] | tuple[str | Path, ...]) -> list[VerificationBin]:
    """:func:`read_bin` of each path; their names (file stems) must differ, as they key the
    results (``bins.<name>``).

    Raises:
        UserError: as :func:`read_bin`, or two sets with one name.
    """
    sets = [read_bin(p) for p in paths]
    names = [b.name for b in sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"two .bin sets are named {twice[0]!r} (their results are keyed by "
                        "file name): rename one")
    return sets
