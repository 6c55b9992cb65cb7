"""Decode one image file to an RGB ``uint8`` tensor, fast where possible, robust always.

JPEG and PNG go through ``torchvision.io`` (libjpeg-turbo / libpng, no PIL object in between);
a JPEG at least 8x larger than needed is decoded at 1/4 or 1/8 scale in the DCT domain
(Pillow's draft mode); everything else (BMP, PGM, WebP, 16-bit grey...) through Pillow.
Every problem is raised as an :class:`ImageError` whose ``reason`` is one of a few
categories, so callers can count and report skipped files instead of crashing.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as F

try:  # deprecated since torchvision 0.29 (TorchCodec replaces it); Pillow covers its absence
    from torchvision.io import ImageReadMode, decode_jpeg, decode_png
except ImportError:  # pragma: no cover
    decode_jpeg = decode_png = None

#: images whose shorter side is below this are skipped as "too small" (no face fits in them)
MIN_IMAGE_SIDE = 8
#: decode a JPEG at 1/4 (1/8) scale when it is at least 8x (16x) larger than needed, so the
#: reduced image is still >= 2x the target and the final antialiased resize does the filtering
_MIN_DRAFT_REDUCTION = 8
_TORCHVISION_MODES = MappingProxyType({  # read-only: format -> modes torchvision.io decodes
    "JPEG": ("RGB", "L", "CMYK"),
    "PNG": ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I;16B", "I", "I;16L"),
})


class ImageError(ValueError):
    """A file that cannot be used as an image. ``reason`` is the category for the skip report:
    ``not an image``, ``truncated``, ``too large``, ``too small``, ``unreadable`` or
    ``broken link`` (and ``no face`` when aligning: :mod:`facetrip.data.transforms`);
    ``str(error)`` adds the detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def max_pixels() -> int:
    """Largest accepted width x height: Pillow's decompression-bomb limit (~89 megapixels)."""
    return int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def display_path(path: str | os.PathLike) -> str:
    """``path`` printable on any terminal (undecodable name bytes shown as ``\\xNN``)."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _os_error(path: str | os.PathLike, exc: OSError) -> ImageError:
    if isinstance(exc, PermissionError):
        return ImageError("unreadable", "permission denied")
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        return ImageError("broken link", f"target {display_path(os.readlink(path))} is missing")
    return ImageError("unreadable", exc.strerror or str(exc))


def _check_regular(path: str | os.PathLike) -> None:
    """Refuse FIFOs, devices and sockets before ``open`` (which could block on them)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ImageError("not an image", "not a regular file")


def _check_header(img: Image.Image) -> None:
    width, height = img.size
    if width * height > max_pixels():
        raise ImageError("too large", f"{width}x{height} pixels")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError("too small", f"{width}x{height} pixels")


def _open_header(fp: io.IOBase) -> Image.Image:
    try:
        with warnings.catch_warnings():  # 1-2x the limit only warns; _check_header rejects it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp)
    except Image.DecompressionBombError as exc:
        raise ImageError("too large", str(exc).split(" pixels")[0] + " pixels") from None
    except (UnidentifiedImageError, SyntaxError, ValueError):
        raise ImageError("not an image") from None
    _check_header(img)
    return img


def _jpeg_complete(tail: bytes) -> bool:
    """A JPEG ends with the EOI marker; allow a little trailing padding after it."""
    return b"\xff\xd9" in tail


def probe_image(path: str | os.PathLike) -> tuple[str, int, int]:
    """``(format, width, height)`` from the header (plus the end of a JPEG), without decoding.

    Raises:
        ImageError: not an image, truncated JPEG, too large/small, unreadable, broken link.
    """
    try:
        _check_regular(path)
        with open(path, "rb") as f:
            with _open_header(f) as img:
                fmt, (width, height) = img.format or "", img.size
            if fmt == "JPEG":
                f.seek(-min(64, os.fstat(f.fileno()).st_size), os.SEEK_END)
                if not _jpeg_complete(f.read()):
                    raise ImageError("truncated", "JPEG without end marker")
    except OSError as exc:
        raise _os_error(path, exc) from None
    return fmt, width, height


def header_size(data: bytes | bytearray) -> tuple[int, int] | None:
    """``(width, height)`` of an encoded image held in memory, from its header only; None when
    Pillow cannot read the header."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any header Pillow cannot parse
        return None


def read_bytes(path: str | os.PathLike) -> bytearray:
    """The file's bytes (a writable buffer ``torch.frombuffer`` can share)."""
    try:
        _check_regular(path)
        with open(path, "rb") as f:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            n = f.readinto(buf)
    except OSError as exc:
        raise _os_error(path, exc) from None
    return buf[:n] if n != len(buf) else buf


def _pil_rgb(img: Image.Image) -> torch.Tensor:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    return F.pil_to_tensor(img.convert("RGB"))


def decode_rgb(
    path: str | os.PathLike, reduction: Callable[[int, int], int] | None = None
) -> torch.Tensor:
    """Decode ``path`` to ``(3, H, W)`` uint8 RGB, EXIF orientation applied, alpha dropped.

    ``reduction(width, height)`` may return how many times larger than needed the image is;
    a JPEG at least 8x larger is decoded at reduced scale (1/4, or 1/8 from 16x) in the DCT
    domain, several times faster and still at least twice the size the caller resizes to.
    Grey, palette, 16-bit and CMYK images become 8-bit RGB.

    Raises:
        ImageError: with ``reason`` for the skip report; never another exception type for a
            bad file.
    """
    return decode_bytes(read_bytes(path), reduction)


def decode_bytes(
    data: bytes | bytearray, reduction: Callable[[int, int], int] | None = None
) -> torch.Tensor:
    """:func:`decode_rgb` of an encoded image held in memory (a record of a RecordIO file, an
    image of a ``.bin`` set): ``(3, H, W)`` uint8 RGB.

    Raises:
        ImageError: as :func:`decode_rgb`.
    """
    if not isinstance(data, bytearray):  # torch.frombuffer wants a writable buffer
        data = bytearray(data)
    try:
        img = _open_header(io.BytesIO(data))
        fmt, (width, height), mode = img.format, img.size, img.mode
        if fmt == "JPEG" and not _jpeg_complete(data[-64:]):
            raise ImageError("truncated", "JPEG without end marker")
        factor = 1
        if reduction is not None:  # either orientation: EXIF may swap width and height
            factor = min(reduction(width, height), reduction(height, width))
        if fmt == "JPEG" and factor >= _MIN_DRAFT_REDUCTION:
            scale = 8 if factor >= 2 * _MIN_DRAFT_REDUCTION else 4
            img.draft("RGB", (width // scale, height // scale))
            return _pil_rgb(img)
        if decode_jpeg is not None and mode in _TORCHVISION_MODES.get(fmt or "", ()):
            raw = torch.frombuffer(data, dtype=torch.uint8)
            if fmt == "JPEG":
                return decode_jpeg(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
            x = decode_png(raw, mode=ImageReadMode.RGB, apply_exif_orientation=True)
            return x if x.dtype == torch.uint8 else F.to_dtype(x, torch.uint8, scale=True)
        return _pil_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("too large", str(exc)) from None
    except (OSError, RuntimeError, ValueError, SyntaxError) as exc:
        # Pillow: "image file is truncated", broken streams; torchvision: RuntimeError
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        reason = "truncated" if "truncat" in detail.lower() else "not an image"
        raise ImageError(reason, detail[:200]) from None


def decode_pil(path: str | Path) -> Image.Image:
    """:func:`decode_rgb` as a PIL RGB image (for code that works on PIL images)."""
    return F.to_pil_image(decode_rgb(path))
