"""Procedural face generator: a synthetic identity data set for triplet-loss training.

An *identity* is a fixed set of traits: head shape, eye spacing and size, eye colour, nose,
mouth, brows, skin and hair tone, hair style, glasses and beard. Every *image* of an identity
adds nuisance on top: pose (rotation, shift, scale, a little yaw), expression (mouth, brows,
blinks, gaze), a cluttered background that differs every time, a random shirt colour, an
occluding bar or blob now and then, a lighting gradient with brightness/contrast changes, blur
and pixel noise. The nuisance dominates raw pixel distances while the traits stay visible, so
pixels verify identities poorly but a small network learns them.

Faces are drawn with Pillow at a multiple of the output size and downsampled (box filter) for
antialiasing. Every identity and every image has its own ``numpy`` generator seeded from
``(seed, identity index[, image index])``, so the output does not depend on generation order.
Only Pillow and numpy are used; nothing is printed.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Colour = tuple[int, int, int]
Point = tuple[float, float]

HAIR_STYLES = (
    "bald", "buzz", "short", "side_part", "fringe", "bob", "long", "afro", "mohawk", "bun",
)
BEARD_STYLES = ("none", "stubble", "moustache", "goatee", "full")
GLASSES_STYLES = ("none", "round", "square", "sun")
NOSE_STYLES = ("triangle", "line", "round")

MIN_SIZE = 16
MAX_SIZE = 512
OCCLUSION_PROBABILITY = 0.2

_SKIN_TONES: tuple[Colour, ...] = (
    (255, 226, 204), (241, 196, 160), (226, 172, 128), (196, 136, 90), (150, 98, 62),
    (104, 66, 42), (70, 46, 32),
)
_HAIR_COLOURS: tuple[Colour, ...] = (
    (22, 18, 18), (58, 38, 26), (100, 66, 38), (150, 70, 32), (196, 96, 42), (214, 178, 110),
    (236, 222, 180), (140, 138, 134), (222, 222, 222),
)
_DYED_HAIR: tuple[Colour, ...] = (
    (40, 80, 200), (220, 70, 160), (40, 160, 90), (120, 50, 170), (20, 170, 190),
)
_EYE_COLOURS: tuple[Colour, ...] = (
    (70, 42, 22), (120, 80, 40), (60, 110, 190), (70, 140, 90), (120, 130, 140), (150, 120, 60),
)
_FRAME_COLOURS: tuple[Colour, ...] = (
    (15, 15, 20), (110, 60, 30), (200, 30, 40), (30, 60, 200), (210, 170, 40), (230, 230, 235),
)
_LIP_COLOURS: tuple[Colour, ...] = (
    (170, 60, 60), (200, 70, 110), (120, 30, 40), (130, 60, 120), (190, 110, 90),
)
_EARRING_COLOURS: tuple[Colour, ...] = (
    (230, 190, 40), (215, 215, 225), (220, 30, 40), (40, 90, 230), (40, 200, 120),
)
_ID_PATTERN = re.compile(r"id_\d+")


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synthesize` wrote: the root folder, identity and image counts."""

    root: Path
    identities: int
    images: int


@dataclass(frozen=True)
class IdentityParams:
    """The stable traits of one synthetic person.

    Lengths are fractions of the head half-width ``w`` (horizontal) or half-height ``h``
    (vertical) unless stated otherwise; colours are RGB tuples.
    """

    skin: Colour
    hair: Colour
    eye: Colour
    lips: Colour
    face_width: float  # head half-width as a fraction of the canvas
    face_aspect: float  # h / w
    squareness: float  # superellipse exponent: 2 is an ellipse, larger is squarer
    chin_taper: float  # 0 is a round jaw, larger narrows the chin
    ear_size: float
    eye_spacing: float  # eye centre distance from the midline (of w)
    eye_height: float  # eye line above the head centre (of h)
    eye_size: float  # eye half-width (of w)
    eye_roundness: float  # eye half-height / half-width
    brow_thickness: float  # (of w)
    brow_angle: float  # positive lowers the inner ends (stern), negative raises them
    brow_gap: float  # brow distance above the eye (of h)
    nose_style: str
    nose_length: float  # (of h)
    nose_width: float  # (of w)
    mouth_width: float  # mouth half-width (of w)
    mouth_height: float  # mouth line below the head centre (of h)
    lip_thickness: float  # (of w)
    hair_style: str
    hair_volume: float  # (of w)
    hairline: float  # forehead hairline above the head centre (of h)
    part_side: int  # -1 or 1: side of the parting
    glasses: str
    glasses_colour: Colour
    beard: str
    mole: Point | None  # (x of w, y of h) relative to the head centre
    blush: float  # strength of pink cheeks, 0 for none
    earrings: Colour | None


@dataclass(frozen=True)
class _Expression:
    """Per-image changes of the face itself."""

    mouth_curve: float  # -1 frown .. 1 smile
    mouth_open: float  # 0 closed .. 1 wide open
    brow_raise: float
    eye_open: float  # 0 shut .. ~1 open
    gaze: Point
    yaw: float  # -1 .. 1: features shift sideways as if the head turned


@dataclass(frozen=True)
class _Head:
    """Head centre and half-axes in render pixels."""

    cx: float
    cy: float
    w: float
    h: float


# --------------------------------------------------------------------------- colours


def _clip_colour(values: np.ndarray) -> Colour:
    r, g, b = (int(v) for v in np.clip(np.round(values), 0, 255))
    return (r, g, b)


def _jitter(rng: np.random.Generator, colour: Colour, amount: float) -> Colour:
    return _clip_colour(np.asarray(colour, dtype=float) + rng.normal(0.0, amount, 3))


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    return _clip_colour((1.0 - t) * np.asarray(a, dtype=float) + t * np.asarray(b, dtype=float))


def _shade(colour: Colour, factor: float) -> Colour:
    return _clip_colour(np.asarray(colour, dtype=float) * factor)


def _random_colour(rng: np.random.Generator) -> Colour:
    return _clip_colour(rng.integers(0, 256, 3))


def _skin_tone(rng: np.random.Generator) -> Colour:
    t = rng.uniform(0.0, len(_SKIN_TONES) - 1)
    i = min(int(t), len(_SKIN_TONES) - 2)
    return _jitter(rng, _mix(_SKIN_TONES[i], _SKIN_TONES[i + 1], t - i), 6.0)


def _hair_colour(rng: np.random.Generator) -> Colour:
    palette = _DYED_HAIR if rng.random() < 0.25 else _HAIR_COLOURS
    return _jitter(rng, palette[int(rng.integers(len(palette)))], 20.0)


# --------------------------------------------------------------------------- sampling


def sample_identity(rng: np.random.Generator) -> IdentityParams:
    """Draw the stable traits of one synthetic person from ``rng``."""
    skin = _skin_tone(rng)
    hair_style = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
    beard = "none" if rng.random() < 0.6 else BEARD_STYLES[int(rng.integers(1, len(BEARD_STYLES)))]
    glasses = "none" if rng.random() < 0.55 else GLASSES_STYLES[int(rng.integers(1, 4))]
    mole = None
    if rng.random() < 0.3:
        mole = (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(0.05, 0.45)))
    blush = float(rng.uniform(0.2, 0.45)) if rng.random() < 0.3 else 0.0
    earrings = None
    if rng.random() < 0.25:
        earrings = _jitter(rng, _EARRING_COLOURS[int(rng.integers(len(_EARRING_COLOURS)))], 8.0)
    lip_colour = _jitter(rng, _LIP_COLOURS[int(rng.integers(len(_LIP_COLOURS)))], 12.0)
    return IdentityParams(
        skin=skin,
        hair=_hair_colour(rng),
        eye=_jitter(rng, _EYE_COLOURS[int(rng.integers(len(_EYE_COLOURS)))], 8.0),
        lips=_mix(skin, lip_colour, float(rng.uniform(0.35, 0.75))),
        face_width=float(rng.uniform(0.23, 0.29)),
        face_aspect=float(rng.uniform(1.1, 1.45)),
        squareness=float(rng.uniform(2.0, 3.6)),
        chin_taper=float(rng.uniform(0.0, 0.45)),
        ear_size=float(rng.uniform(0.75, 1.3)),
        eye_spacing=float(rng.uniform(0.32, 0.5)),
        eye_height=float(rng.uniform(0.02, 0.2)),
        eye_size=float(rng.uniform(0.13, 0.22)),
        eye_roundness=float(rng.uniform(0.45, 0.9)),
        brow_thickness=float(rng.uniform(0.05, 0.15)),
        brow_angle=float(rng.uniform(-0.5, 0.6)),
        brow_gap=float(rng.uniform(0.05, 0.16)),
        nose_style=NOSE_STYLES[int(rng.integers(len(NOSE_STYLES)))],
        nose_length=float(rng.uniform(0.22, 0.42)),
        nose_width=float(rng.uniform(0.1, 0.24)),
        mouth_width=float(rng.uniform(0.25, 0.52)),
        mouth_height=float(rng.uniform(0.45, 0.62)),
        lip_thickness=float(rng.uniform(0.05, 0.12)),
        hair_style=hair_style,
        hair_volume=float(rng.uniform(0.06, 0.22)),
        hairline=float(rng.uniform(0.4, 0.65)),
        part_side=1 if rng.random() < 0.5 else -1,
        glasses=glasses,
        glasses_colour=_jitter(rng, _FRAME_COLOURS[int(rng.integers(len(_FRAME_COLOURS)))], 8.0),
        beard=beard,
        mole=mole,
        blush=blush,
        earrings=earrings,
    )


def _sample_expression(rng: np.random.Generator) -> _Expression:
    mouth_open = float(rng.uniform(0.2, 1.0)) if rng.random() < 0.35 else 0.0
    blink = rng.random() < 0.1
    eye_open = float(rng.uniform(0.0, 0.2) if blink else rng.uniform(0.6, 1.1))
    gaze = (float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.2, 0.2)))
    return _Expression(
        mouth_curve=float(rng.uniform(-0.6, 1.0)),
        mouth_open=mouth_open,
        brow_raise=float(rng.uniform(-0.5, 1.0)),
        eye_open=eye_open,
        gaze=gaze,
        yaw=float(rng.uniform(-1.0, 1.0)),
    )


# --------------------------------------------------------------------------- geometry


def _superellipse(
    head: _Head, rx: float, ry: float, n: float, taper: float, t0: float, t1: float, count: int
) -> list[Point]:
    """Points of a superellipse arc around the head centre; the lower half narrows by taper."""
    t = np.linspace(t0, t1, count)
    c, s = np.cos(t), np.sin(t)
    x = np.sign(c) * np.abs(c) ** (2.0 / n)
    y = np.sign(s) * np.abs(s) ** (2.0 / n)
    x = x * (1.0 - taper * np.clip(y, 0.0, None) ** 2)
    return list(zip((head.cx + rx * x).tolist(), (head.cy + ry * y).tolist()))


def _head_outline(head: _Head, ident: IdentityParams, grow: float = 1.0) -> list[Point]:
    return _superellipse(
        head, head.w * grow, head.h * grow, ident.squareness, ident.chin_taper,
        0.0, 2.0 * math.pi, 48,
    )


def _width(value: float) -> int:
    return max(1, int(round(value)))


def _ellipse(draw: ImageDraw.ImageDraw, x: float, y: float, rx: float, ry: float,
             fill: Colour | None = None, outline: Colour | None = None, width: int = 1) -> None:
    draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=fill, outline=outline, width=width)


# --------------------------------------------------------------------------- face parts


def _draw_back_hair(draw: ImageDraw.ImageDraw, ident: IdentityParams, head: _Head) -> None:
    cx, cy, w, h = head.cx, head.cy, head.w, head.h
    v = ident.hair_volume * w
    style, hair = ident.hair_style, ident.hair
    if style in ("long", "bob"):
        bottom = cy + (1.35 if style == "long" else 0.45) * h
        box = (cx - w - 2 * v, cy - h - v, cx + w + 2 * v, bottom)
        draw.rounded_rectangle(box, radius=0.8 * w, fill=hair)
    elif style == "afro":
        rx, ry, ay = 1.35 * w + v, 0.95 * h + v, cy - 0.2 * h
        _ellipse(draw, cx, ay, rx, ry, fill=hair)
        for t in np.linspace(0.75 * math.pi, 2.25 * math.pi, 11):
            _ellipse(draw, cx + rx * math.cos(t), ay + ry * math.sin(t), 0.22 * w, 0.22 * w,
                     fill=hair)
    elif style == "bun":
        r = 0.33 * w
        _ellipse(draw, cx + 0.25 * ident.part_side * w, cy - h - 0.5 * v - 0.6 * r, r, r,
                 fill=hair)


def _hairline_points(ident: IdentityParams, head: _Head) -> list[Point]:
    """The lower edge of the hair cap, from the right temple across the forehead to the left."""
    u = np.linspace(1.0, -1.0, 15)
    if ident.hair_style in ("fringe", "bob"):
        jagged = ident.hairline - 0.2 + 0.05 * (np.arange(u.size) % 2)
        level = jagged * (1.0 - np.abs(u) ** 6)  # low, flat bangs
    else:
        part = 0.15 * ident.part_side * u if ident.hair_style == "side_part" else 0.0
        level = (ident.hairline + part) * (1.0 - np.abs(u) ** 3)
    x = head.cx + 0.98 * head.w * u
    y = head.cy - head.h * level
    return list(zip(x.tolist(), y.tolist()))


def _hair_cap(ident: IdentityParams, head: _Head, volume: float) -> list[Point]:
    outer = _superellipse(
        head, head.w + volume, head.h + volume, ident.squareness, 0.0, math.pi, 2.0 * math.pi, 25
    )
    return outer + _hairline_points(ident, head)


def _draw_front_hair(draw: ImageDraw.ImageDraw, ident: IdentityParams, head: _Head) -> None:
    cx, cy, w, h = head.cx, head.cy, head.w, head.h
    style, hair = ident.hair_style, ident.hair
    if style == "bald":
        for s in (-1.0, 1.0):
            _ellipse(draw, cx + s * 0.96 * w, cy - 0.2 * h, 0.1 * w, 0.26 * h, fill=hair)
        return
    if style in ("buzz", "mohawk"):
        draw.polygon(_hair_cap(ident, head, 0.03 * w), fill=_mix(hair, ident.skin, 0.5))
        if style == "mohawk":
            xs = np.linspace(cx - 0.17 * w, cx + 0.17 * w, 7)
            spikes = [(float(x), cy - h - (0.55 if k % 2 == 0 else 0.3) * w)
                      for k, x in enumerate(xs)]
            line = cy - ident.hairline * h
            base = [(cx + 0.17 * w, line), (cx - 0.17 * w, line)]
            draw.polygon(spikes + base, fill=hair)
        return
    draw.polygon(_hair_cap(ident, head, ident.hair_volume * w), fill=hair)


def _draw_ears(draw: ImageDraw.ImageDraw, ident: IdentityParams, head: _Head, yaw: float) -> None:
    for s in (-1.0, 1.0):
        scale = ident.ear_size * (1.0 - 0.25 * s * yaw)
        x, y = head.cx + s * 0.97 * head.w, head.cy - 0.05 * head.h
        ry = 0.25 * head.h * scale
        _ellipse(draw, x, y, 0.16 * head.w * scale, ry, fill=_shade(ident.skin, 0.92))
        if ident.earrings is not None:
            r = 0.09 * head.w
            _ellipse(draw, x, y + ry + r, r, r, fill=ident.earrings)


def _lower_face(ident: IdentityParams, head: _Head, grow: float, from_y: float) -> list[Point]:
    return [p for p in _head_outline(head, ident, grow) if p[1] >= head.cy + from_y * head.h]


def _draw_beard_base(draw: ImageDraw.ImageDraw, ident: IdentityParams, head: _Head) -> None:
    if ident.beard == "stubble":
        draw.polygon(_lower_face(ident, head, 1.0, 0.2), fill=_mix(ident.skin, ident.hair, 0.35))
    elif ident.beard == "full":
        draw.polygon(_lower_face(ident, head, 1.04, 0.15), fill=ident.hair)
    elif ident.beard == "goatee":
        _ellipse(draw, head.cx, head.cy + 0.86 * head.h, 0.22 * head.w, 0.15 * head.h,
                 fill=ident.hair)


def _draw_moustache(draw: ImageDraw.ImageDraw, ident: IdentityParams, head: _Head,
                    mouth: Point) -> None:
    if ident.beard not in ("moustache", "goatee", "full"):
        return
    mx, my = mouth
    half = max(ident.mouth_width, 0.3) * head.w
    pts = [(mx - 1.05 * half, my - 0.02 * head.h), (mx, my - 0.13 * head.h),
           (mx + 1.05 * half, my - 0.02 * head.h)]
    draw.line(pts, fill=ident.hair, width=_width(0.11 * head.w), joint="curve")


def _draw_eyes(draw: ImageDraw.ImageDraw, ident: IdentityParams, head: _Head,
               expr: _Expression) -> list[Point]:
    centres = []
    rx = ident.eye_size * head.w
    ry = rx * ident.eye_roundness * expr.eye_open
    lid = _shade(ident.skin, 0.45)
    for s in (-1.0, 1.0):
        ex = head.cx + (s * ident.eye_spacing + 0.12 * expr.yaw) * head.w
        ey = head.cy - ident.eye_height * head.h
        centres.append((ex, ey))
        if expr.eye_open < 0.25:
            draw.line([(ex - rx, ey), (ex + rx, ey)], fill=lid, width=_width(0.3 * rx))
            continue
        _ellipse(draw, ex, ey, rx, ry, fill=(242, 242, 236))
        ix, iy = ex + expr.gaze[0] * rx, ey + expr.gaze[1] * ry
        ri = 0.62 * rx
        _ellipse(draw, ix, iy, ri, min(ri, ry), fill=ident.eye)
        _ellipse(draw, ix, iy, 0.45 * ri, min(0.45 * ri, ry), fill=(12, 10, 10))
        draw.arc((ex - rx, ey - ry, ex + rx, ey + ry), 180, 360, fill=lid, width=_width(0.2 * rx))
    return centres


def _draw_brows(draw: ImageDraw.ImageDraw, ident: IdentityParams, head: _Head,
                expr: _Expression, eyes: list[Point]) -> None:
    rx = ident.eye_size * head.w
    colour = _shade(ident.hair, 0.75)
    for (ex, ey), s in zip(eyes, (-1.0, 1.0)):
        base = ey - rx * ident.eye_roundness - (ident.brow_gap + 0.07 * expr.brow_raise) * head.h
        inner = (ex - s * 1.0 * rx, base + ident.brow_angle * rx)
        outer = (ex + s * 1.25 * rx, base - 0.4 * ident.brow_angle * rx)
        draw.line([inner, outer], fill=colour, width=_width(ident.brow_thickness * head.w))


def _draw_nose(draw: ImageDraw.ImageDraw, ident: IdentityParams, head: _Head,
               expr: _Expression) -> None:
    nx = head.cx + 0.2 * expr.yaw * head.w
    top = head.cy - ident.eye_height * head.h + 0.1 * head.h
    tip = head.cy - ident.eye_height * head.h + ident.nose_length * head.h
    nw = ident.nose_width * head.w
    if ident.nose_style == "triangle":
        draw.polygon([(nx, top), (nx - nw, tip), (nx + nw, tip)], fill=_shade(ident.skin, 0.82))
    elif ident.nose_style == "line":
        pts = [(nx + 0.2 * nw, top), (nx + 0.6 * nw, tip), (nx - 0.5 * nw, tip)]
        draw.line(pts, fill=_shade(ident.skin, 0.62), width=_width(0.06 * head.w))
    else:
        _ellipse(draw, nx, tip - 0.4 * nw, 0.75 * nw, 0.6 * nw, fill=_shade(ident.skin, 0.86))
        for s in (-1.0, 1.0):
            _ellipse(draw, nx + s * 0.4 * nw, tip - 0.2 * nw, 0.18 * nw, 0.14 * nw,
                     fill=_shade(ident.skin, 0.5))


def _draw_mouth(draw: ImageDraw.ImageDraw, ident: IdentityParams, head: _Head,
                expr: _Expression) -> Point:
    mx = head.cx + 0.12 * expr.yaw * head.w
    my = head.cy + ident.mouth_height * head.h
    half = ident.mouth_width * head.w
    u = np.linspace(-1.0, 1.0, 11)
    mid = my + expr.mouth_curve * 0.3 * half * (1.0 - u**2) - 0.1 * expr.mouth_curve * half
    gap = expr.mouth_open * 0.45 * half * np.sqrt(1.0 - u**2)
    xs = (mx + half * u).tolist()
    upper = list(zip(xs, (mid - gap / 2).tolist()))
    lower = list(zip(xs, (mid + gap / 2).tolist()))
    lip_w = _width(ident.lip_thickness * head.w)
    if expr.mouth_open > 0.1:
        draw.polygon(upper + lower[::-1], fill=(70, 22, 28))
        draw.line(upper, fill=ident.lips, width=lip_w, joint="curve")
        draw.line(lower, fill=ident.lips, width=lip_w, joint="curve")
    else:
        draw.line(upper, fill=ident.lips, width=_width(1.4 * lip_w), joint="curve")
    return (mx, float(mid[5]))


def _draw_glasses(draw: ImageDraw.ImageDraw, ident: IdentityParams, head: _Head,
                  eyes: list[Point]) -> None:
    if ident.glasses == "none":
        return
    rx = 1.75 * ident.eye_size * head.w
    ry = 1.35 * ident.eye_size * head.w
    frame = _width(0.055 * head.w)
    colour = ident.glasses_colour
    lens = (28, 28, 36) if ident.glasses == "sun" else None
    for (ex, ey), s in zip(eyes, (-1.0, 1.0)):
        box = (ex - rx, ey - ry, ex + rx, ey + ry)
        if ident.glasses == "round":
            draw.ellipse(box, fill=lens, outline=colour, width=frame)
        else:
            draw.rounded_rectangle(box, radius=0.3 * ry, fill=lens, outline=colour, width=frame)
        draw.line([(ex + s * rx, ey), (head.cx + s * head.w, ey - 0.05 * head.h)],
                  fill=colour, width=frame)
    (lx, ly), (rx_, ry_) = eyes
    draw.line([(lx + rx, ly), (rx_ - rx, ry_)], fill=colour, width=frame)


def _draw_shoulders(draw: ImageDraw.ImageDraw, ident: IdentityParams, head: _Head,
                    shirt: Colour) -> None:
    cx, cy, w, h = head.cx, head.cy, head.w, head.h
    _ellipse(draw, cx, cy + 1.25 * h + 1.1 * w, 2.1 * w, 1.2 * w, fill=shirt)
    draw.rectangle((cx - 0.4 * w, cy + 0.5 * h, cx + 0.4 * w, cy + 1.3 * h),
                   fill=_shade(ident.skin, 0.85))


def _draw_face(ident: IdentityParams, expr: _Expression, shirt: Colour, canvas: int) -> Image.Image:
    """The face on a transparent layer, upright and centred."""
    layer = Image.new("RGBA", (canvas, canvas), ident.skin + (0,))
    draw = ImageDraw.Draw(layer)
    w = ident.face_width * canvas
    head = _Head(cx=0.5 * canvas, cy=0.45 * canvas, w=w, h=w * ident.face_aspect)
    _draw_shoulders(draw, ident, head, shirt)
    _draw_back_hair(draw, ident, head)
    _draw_ears(draw, ident, head, expr.yaw)
    draw.polygon(_head_outline(head, ident), fill=ident.skin)
    if ident.blush > 0.0:
        cheeks = _mix(ident.skin, (235, 90, 110), ident.blush)
        for s in (-1.0, 1.0):
            _ellipse(draw, head.cx + s * 0.5 * w, head.cy + 0.25 * head.h, 0.2 * w, 0.12 * head.h,
                     fill=cheeks)
    _draw_beard_base(draw, ident, head)
    _draw_front_hair(draw, ident, head)
    eyes = _draw_eyes(draw, ident, head, expr)
    _draw_brows(draw, ident, head, expr, eyes)
    _draw_nose(draw, ident, head, expr)
    mouth = _draw_mouth(draw, ident, head, expr)
    _draw_moustache(draw, ident, head, mouth)
    if ident.mole is not None:
        _ellipse(draw, head.cx + ident.mole[0] * w, head.cy + ident.mole[1] * head.h,
                 0.07 * w, 0.07 * w, fill=(70, 40, 30))
    _draw_glasses(draw, ident, head, eyes)
    return layer


# --------------------------------------------------------------------------- nuisance


def _background(rng: np.random.Generator, canvas: int) -> Image.Image:
    """A gradient between four random corner colours with random shapes on top."""
    corners = rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)
    bg = Image.fromarray(corners, "RGB").resize((canvas, canvas), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(4, 11))):
        kind = int(rng.integers(4))
        x, y = rng.uniform(0, canvas, 2)
        sx, sy = rng.uniform(0.04, 0.35, 2) * canvas
        colour = _random_colour(rng)
        if kind == 0:
            draw.ellipse((x - sx, y - sy, x + sx, y + sy), fill=colour)
        elif kind == 1:
            draw.rectangle((x - sx, y - sy, x + sx, y + sy), fill=colour)
        elif kind == 2:
            pts = rng.uniform(-1, 1, (3, 2)) * (sx, sy) + (x, y)
            draw.polygon([tuple(p) for p in pts.tolist()], fill=colour)
        else:
            draw.line([(x - sx, y - sy), (x + sx, y + sy)], fill=colour,
                      width=_width(rng.uniform(0.01, 0.05) * canvas))
    return bg


def _pose(layer: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate (±15°), scale (±10%) and shift (±10%) the face layer about the canvas centre."""
    canvas = layer.size[0]
    angle = math.radians(rng.uniform(-15.0, 15.0))
    scale = rng.uniform(0.9, 1.1)
    tx, ty = rng.uniform(-0.1, 0.1, 2) * canvas
    c = 0.5 * canvas
    a, b = math.cos(angle) / scale, math.sin(angle) / scale
    # inverse map: output pixel -> input pixel
    coeffs = (a, b, c - a * (c + tx) - b * (c + ty), -b, a, c + b * (c + tx) - a * (c + ty))
    return layer.transform(layer.size, Image.Transform.AFFINE, coeffs,
                           resample=Image.Resampling.BILINEAR)


def _occlude(img: Image.Image, rng: np.random.Generator) -> None:
    """With some probability, paint a random bar or blob over part of the face (in place)."""
    if rng.random() >= OCCLUSION_PROBABILITY:
        return
    canvas = img.size[0]
    draw = ImageDraw.Draw(img)
    x, y = canvas * (0.5 + rng.normal(0.0, 0.12, 2))
    colour = _random_colour(rng)
    if rng.random() < 0.5:
        length = rng.uniform(0.12, 0.3) * canvas
        thick = rng.uniform(0.025, 0.06) * canvas
        t = rng.uniform(0.0, math.pi)
        dx, dy = math.cos(t), math.sin(t)
        pts = [(x + sl * length * dx - st * thick * dy, y + sl * length * dy + st * thick * dx)
               for sl, st in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        draw.polygon(pts, fill=colour)
    else:
        rx, ry = rng.uniform(0.04, 0.08, 2) * canvas
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=colour)


def _photometric(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Blur, then a lighting gradient, brightness/contrast/colour cast and pixel noise."""
    size = img.size[0]
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.7) * size / 64.0))
    arr = np.asarray(img, dtype=np.float32)
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    phi = rng.uniform(0.0, 2.0 * math.pi)
    slope = rng.uniform(0.0, 0.25)
    light = 1.0 + slope * (math.cos(phi) * axis[None, :] + math.sin(phi) * axis[:, None])
    gain = rng.uniform(0.9, 1.1) * (1.0 + rng.uniform(-0.03, 0.03, 3))
    arr *= light[:, :, None] * gain.astype(np.float32)
    mean = float(arr.mean())
    contrast, offset = rng.uniform(0.85, 1.15), rng.uniform(-10.0, 10.0)
    arr = (arr - mean) * np.float32(contrast) + np.float32(mean + offset + 0.5)
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 8.0))
    return Image.fromarray(np.clip(arr, 0.0, 255.0).astype(np.uint8), "RGB")


def _supersample(size: int) -> int:
    return 4 if size <= 32 else 3 if size <= 128 else 2


def render_face(identity: IdentityParams, rng: np.random.Generator, size: int) -> Image.Image:
    """Render one ``size`` x ``size`` RGB image of ``identity`` with nuisance drawn from ``rng``."""
    _check_int("size", size, MIN_SIZE, MAX_SIZE)
    canvas = size * _supersample(size)
    bg = _background(rng, canvas)
    layer = _draw_face(identity, _sample_expression(rng), _random_colour(rng), canvas)
    img = Image.alpha_composite(bg.convert("RGBA"), _pose(layer, rng)).convert("RGB")
    _occlude(img, rng)
    return _photometric(img.reduce(canvas // size), rng)


# --------------------------------------------------------------------------- writing


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ValueError(f"{name} must be {bounds}, got {value}")


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _prepare_root(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"output path {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output directory {root} is not empty; choose another one or pass overwrite=True"
            )
        for child in root.iterdir():
            if child.is_dir() and _ID_PATTERN.fullmatch(child.name):
                shutil.rmtree(child)
    root.mkdir(parents=True, exist_ok=True)


def _write_identity(task: tuple[Path, int, int, int, int, int, int]) -> int:
    """Render and write every image of one identity; returns how many were written."""
    root, i, id_digits, img_digits, images_per_identity, size, seed = task
    identity = sample_identity(_rng(seed, 0, i))
    folder = root / f"id_{i:0{id_digits}d}"
    folder.mkdir()
    for j in range(images_per_identity):
        img = render_face(identity, _rng(seed, 1, i, j), size)
        img.save(folder / f"{j:0{img_digits}d}.png", format="PNG")
    return images_per_identity


def synthesize(
    out_dir: str | Path,
    identities: int = 300,
    images_per_identity: int = 20,
    size: int = 64,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    *,
    overwrite: bool = False,
    workers: int | None = None,
) -> SynthSummary:
    """Write a synthetic face data set as ``OUT/id_00000/00.png`` ... and return a summary.

    Args:
        out_dir: output folder; created if missing. It must be empty unless ``overwrite``.
        identities: number of people (>= 1).
        images_per_identity: images per person (>= 1).
        size: image side in pixels, between 16 and 512.
        seed: non-negative seed; the same arguments give byte-identical files, whatever
            ``workers`` is.
        progress: called with the number of images just written (one identity's worth at a
            time), so the calls sum to ``identities * images_per_identity``.
        overwrite: allow a non-empty ``out_dir``; identity folders (``id_<digits>``) already
            there are deleted first, anything else is left alone.
        workers: processes rendering identities in parallel; ``None`` = one per CPU core,
            ``1`` = in this process.

    Raises:
        ValueError: an argument is out of range.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is false.
        NotADirectoryError: ``out_dir`` is an existing file.
    """
    _check_int("identities", identities, 1)
    _check_int("images_per_identity", images_per_identity, 1)
    _check_int("size", size, MIN_SIZE, MAX_SIZE)
    _check_int("seed", seed, 0)
    if workers is not None:
        _check_int("workers", workers, 1)
    root = Path(out_dir)
    _prepare_root(root, overwrite)
    id_digits = max(5, len(str(identities - 1)))
    img_digits = max(2, len(str(images_per_identity - 1)))
    tasks = [(root, i, id_digits, img_digits, images_per_identity, size, seed)
             for i in range(identities)]
    workers = min(workers or os.cpu_count() or 1, identities)
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        run = functools.partial(pool.map, chunksize=4) if pool is not None else map
        for count in run(_write_identity, tasks):
            if progress is not None:
                progress(count)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return SynthSummary(root=root, identities=identities, images=identities * images_per_identity)
