"""Drawing primitives of the synthetic scenes: class ids, noise, palettes, geometry."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

BACKGROUND, BUILDING, WOODLAND, WATER, ROAD = 0, 1, 2, 3, 4
# Rows per band of per-pixel work (a constant: random draws per band must not depend on it).
_BAND = 256
FloatImage = npt.NDArray[np.float32]
ByteImage = npt.NDArray[np.uint8]
BoolImage = npt.NDArray[np.bool_]
Points = npt.NDArray[np.float64]

# --------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------


def _f32(array: object) -> FloatImage:
    """View of a cv2 result as float32 (cv2's stubs return a loose array type)."""
    return np.asarray(array, dtype=np.float32)


def _noise(h: int, w: int, cell: float, rng: np.random.Generator) -> FloatImage:
    """Smooth noise (mean ~0, std ~1) whose features are about `cell` pixels wide."""
    if cell > 16.0:
        # Large features: build cell-4 noise at reduced size and upsample it. Upsampling a
        # lattice straight to a huge cell would cost (h + 4 cell) x (w + 4 cell) pixels.
        f = cell / 4.0
        lh, lw = math.ceil(h / f) + 2, math.ceil(w / f) + 2
        low = _noise(lh, lw, 4.0, rng)
        big = _f32(cv2.resize(low, (round(lw * f), round(lh * f)), interpolation=cv2.INTER_CUBIC))
        out = big[:h, :w]
    else:
        cell = max(cell, 1.0)
        gh, gw = math.ceil(h / cell) + 3, math.ceil(w / cell) + 3
        lattice = rng.standard_normal((gh, gw), dtype=np.float32)
        size = (round(gw * cell), round(gh * cell))
        big = _f32(cv2.resize(lattice, size, interpolation=cv2.INTER_CUBIC))
        oy, ox = (int(o) for o in rng.integers(0, max(1, int(cell)), size=2))
        out = big[oy : oy + h, ox : ox + w]
        if cell >= 2.0:
            # Upsampled lattices show axis-aligned streaks; an isotropic blur removes them.
            out = _f32(cv2.GaussianBlur(out, (0, 0), 0.3 * cell))
    # Normalise on a subsample: exact statistics are not needed, and the full pass costs.
    sample = out[:: max(1, h // 200), :: max(1, w // 200)]
    out -= np.float32(sample.mean())
    out *= np.float32(1.0 / max(float(sample.std()), 1e-6))
    return out


def _fbm(h: int, w: int, cell: float, rng: np.random.Generator, octaves: int) -> FloatImage:
    """Fractal noise: octaves of `_noise` halving in size, giving ragged natural edges."""
    total = np.zeros((h, w), np.float32)
    amp, norm = 1.0, 0.0
    for i in range(octaves):
        octave = _noise(h, w, cell / 2**i, rng)
        octave *= np.float32(amp)
        total += octave
        norm += amp * amp
        amp *= 0.5
    total *= np.float32(1.0 / math.sqrt(norm))
    return total


def _or_shifted(dst: BoolImage, src: BoolImage, dx: int, dy: int) -> None:
    """dst |= src moved by (dx, dy) pixels, in place (no full-size temporary)."""
    h, w = src.shape
    if abs(dx) >= w or abs(dy) >= h:
        return
    dst[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] |= src[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]


# --------------------------------------------------------------------------------------------
# Palettes (RGB, tuned on the muted look of Polish summer orthophotos)
# --------------------------------------------------------------------------------------------

# base colour, stripe amplitude, tramlines, relative frequency
_FIELD_TYPES: tuple[tuple[tuple[int, int, int], float, bool, float], ...] = (
    ((96, 124, 64), 0.06, True, 3.0),  # cereal, still green
    ((126, 148, 80), 0.05, True, 2.0),  # young crop
    ((184, 168, 110), 0.06, True, 2.2),  # ripe grain
    ((178, 166, 130), 0.10, False, 1.0),  # stubble after harvest
    ((132, 108, 84), 0.13, False, 1.4),  # ploughed soil
    ((106, 90, 72), 0.11, False, 0.8),  # dark moist soil
    ((104, 128, 72), 0.02, False, 2.6),  # meadow
    ((146, 152, 98), 0.04, False, 1.2),  # dry grassland, mown
    ((90, 112, 70), 0.02, False, 0.9),  # lush pasture
    ((200, 188, 96), 0.03, True, 0.25),  # rapeseed
)
_BALK = (112, 132, 78)
_DECIDUOUS = (74, 96, 56)
_CONIFER = (46, 64, 44)
_ASPHALT: tuple[tuple[int, int, int], ...] = ((112, 112, 110), (128, 127, 124), (96, 97, 98))
_GRAVEL: tuple[tuple[int, int, int], ...] = ((158, 152, 138), (146, 141, 130), (170, 164, 150))
_DIRT: tuple[tuple[int, int, int], ...] = ((138, 130, 112), (148, 139, 120), (126, 120, 106))
_ROOF_HOUSE: tuple[tuple[int, int, int], ...] = (
    (152, 74, 58),  # red ceramic tiles
    (126, 62, 52),  # dark red tiles
    (118, 86, 68),  # brown
    (92, 70, 60),  # dark brown
    (120, 120, 124),  # grey concrete tiles
    (84, 86, 92),  # anthracite
)
_ROOF_BARN: tuple[tuple[int, int, int], ...] = (
    (128, 128, 130),  # eternit
    (104, 116, 126),  # blue-grey sheet metal
    (172, 170, 164),  # new sheet metal
    (136, 84, 64),  # old tiles
    (98, 94, 90),  # tar paper
)
_YARD: tuple[tuple[int, int, int], ...] = (
    (112, 136, 78),  # lawn
    (124, 142, 86),  # lawn
    (104, 126, 74),  # lawn with trees
    (136, 146, 98),  # dry lawn
    (136, 134, 122),  # paved courtyard
)


def _pick(options: tuple[tuple[int, int, int], ...], rng: np.random.Generator) -> FloatImage:
    """One colour of `options` with a small per-object jitter."""
    base = np.asarray(options[int(rng.integers(len(options)))], np.float32)
    return base * np.float32(rng.normal(1.0, 0.05)) + rng.normal(0.0, 3.0, 3).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def _random_walk(
    start: tuple[float, float],
    heading: float,
    step: float,
    wiggle: float,
    limit: float,
    rng: np.random.Generator,
) -> Points:
    """Polyline from `start` wandering around `heading` in both directions until `limit`."""
    halves: list[list[tuple[float, float]]] = []
    for direction in (0.0, math.pi):
        target = heading + direction
        ang, (x, y) = target, start
        pts: list[tuple[float, float]] = []
        for _ in range(int(2 * limit / step) + 2):
            # Mean reversion keeps the line crossing the scene instead of curling up.
            ang += rng.normal(0.0, wiggle) - 0.15 * (ang - target)
            x, y = x + step * math.cos(ang), y + step * math.sin(ang)
            pts.append((x, y))
            if abs(x - start[0]) > limit or abs(y - start[1]) > limit:
                break
        halves.append(pts)
    return np.array([*reversed(halves[1]), start, *halves[0]], np.float64)


def _straight(p: tuple[float, float], ang: float, limit: float, step: float) -> Points:
    """Densely sampled straight line through `p`; dense so buildings can follow it."""
    t = np.arange(-limit, limit + step, step)
    return np.stack([p[0] + t * math.cos(ang), p[1] + t * math.sin(ang)], axis=1)


def _clip_polyline(pts: Points, h: int, w: int, margin: float) -> Points:
    """Points of a polyline inside the scene grown by `margin` (keeps cv2 coordinates small)."""
    keep = (
        (pts[:, 0] > -margin)
        & (pts[:, 0] < w + margin)
        & (pts[:, 1] > -margin)
        & (pts[:, 1] < h + margin)
    )
    idx = np.flatnonzero(keep)
    if idx.size == 0:
        return pts[:0]
    return pts[max(idx[0] - 1, 0) : idx[-1] + 2]


def _polylines(
    layer: npt.NDArray[np.uint8] | FloatImage,
    lines: list[Points],
    value: float | tuple[float, ...],
    thickness: int,
) -> None:
    """Draw open polylines in place; one cv2 call per line keeps the cost O(drawn pixels)."""
    for pts in lines:
        if len(pts) >= 2:
            cv2.polylines(
                layer, [np.round(pts).astype(np.int32)], False, value, thickness, cv2.LINE_8
            )


def _bands(h: int) -> list[tuple[int, int]]:
    """Row bands for per-pixel work: small temporaries stay in the allocator's reused memory
    instead of faulting in fresh pages for every full-scene intermediate."""
    return [(y0, min(y0 + _BAND, h)) for y0 in range(0, h, _BAND)]
