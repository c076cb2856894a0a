"""Seeded synthetic aerial scenes written in the LandCover.ai v1 archive layout.

The real archive cannot be downloaded here, so the demo and the tests use rural scenes drawn
by this module: strip fields, woodland, water, roads and farmsteads at 0.25 m per pixel, with
a class mask that matches the image pixel for pixel.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.config import SyntheticParams
from pipeline.data.tiling import official_tile_grid

__all__ = [
    "LANDCOVERAI_CLASS_NAMES",
    "LANDCOVERAI_CRS",
    "PIXEL_SIZE_M",
    "SPLIT_NAMES",
    "SceneSpec",
    "SyntheticArchive",
    "painted_tile_store",
    "synth_scene",
    "synthetic_tile_store",
    "write_landcoverai_archive",
]

LANDCOVERAI_CLASS_NAMES: tuple[str, ...] = ("background", "building", "woodland", "water", "road")
BACKGROUND, BUILDING, WOODLAND, WATER, ROAD = 0, 1, 2, 3, 4
PIXEL_SIZE_M = 0.25
LANDCOVERAI_CRS = "EPSG:2180"
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")

# The earliest timestamp a zip can hold: archive bytes must not depend on the clock.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
# Internal 256 x 256 blocks: a windowed read of one 512 tile decodes only the blocks it covers.
_GTIFF_BLOCK = 256
# Rows per band of per-pixel work (a constant: random draws per band must not depend on it).
_BAND = 256

FloatImage = npt.NDArray[np.float32]
ByteImage = npt.NDArray[np.uint8]
BoolImage = npt.NDArray[np.bool_]
Points = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SceneSpec:
    """One scene of the archive: map-sheet name and size in pixels."""

    name: str
    height: int
    width: int


@dataclass(frozen=True)
class SyntheticArchive:
    """What `write_landcoverai_archive` wrote."""

    path: Path
    md5: str
    scenes: list[SceneSpec]
    splits: dict[str, list[str]]
    class_pixel_counts: dict[str, int]


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


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


@dataclass
class _Fields:
    image: FloatImage
    wood_parcel: BoolImage
    region_theta: list[float]
    region_map: npt.NDArray[np.int32] | None
    cuts: list[tuple[tuple[float, float], float]]


def _bands(h: int) -> list[tuple[int, int]]:
    """Row bands for per-pixel work: small temporaries stay in the allocator's reused memory
    instead of faulting in fresh pages for every full-scene intermediate."""
    return [(y0, min(y0 + _BAND, h)) for y0 in range(0, h, _BAND)]


def _fields(h: int, w: int, rng: np.random.Generator) -> _Fields:
    """Patchwork of strip fields, each with its own crop colour and machinery stripes."""
    diag = math.hypot(h, w)
    xs = np.arange(w, dtype=np.float32)[None, :]

    # Straight cuts split the scene into field systems of different orientation, as roads do
    # in real land consolidation; each cut carries a road later.
    n_cuts = int(rng.integers(0, 2)) + int(math.sqrt(h * w) // 3000)
    cuts: list[tuple[tuple[float, float], float]] = []
    for _ in range(n_cuts):
        p = (float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.2, 0.8) * h))
        cuts.append((p, float(rng.uniform(0, math.pi))))
    n_regions = 2**n_cuts
    region_theta = [float(rng.uniform(0, math.pi)) for _ in range(n_regions)]
    cos_t = np.cos(region_theta).astype(np.float32)
    sin_t = np.sin(region_theta).astype(np.float32)

    # Strips: narrow in u, long in v. Every region has its own strip table over the whole
    # range of u and v (|u|, |v| <= diag), so one lookup table serves all regions.
    lut_len = int(2 * diag) + 2
    min_len, max_len = 300.0, 2200.0
    k_max = int((2 * diag + max_len) / min_len) + 2
    luts: list[npt.NDArray[np.int32]] = []
    offsets: list[npt.NDArray[np.float64]] = []
    lengths: list[npt.NDArray[np.float64]] = []
    n_strips = 0
    for _ in range(n_regions):
        p_narrow = rng.uniform(0.15, 0.9)
        n_guess = int((2 * diag + 480) / 30) + 2  # enough strips to cover u
        narrow = rng.random(n_guess) < p_narrow
        widths = np.where(narrow, rng.uniform(30, 110, n_guess), rng.uniform(110, 480, n_guess))
        edges = np.concatenate([[0.0], np.cumsum(widths)]) - rng.uniform(0, 480)
        lut = np.searchsorted(edges, np.arange(lut_len), side="right").astype(np.int32) - 1
        used = int(lut.max()) + 1
        luts.append(lut + np.int32(n_strips))
        lengths.append(
            np.where(
                narrow[:used], rng.uniform(700, max_len, used), rng.uniform(min_len, 1500, used)
            )
        )
        offsets.append(rng.uniform(0, max_len, used))
        n_strips += used
    lut_all = np.concatenate(luts)
    strip_len = np.concatenate(lengths).astype(np.float32)
    strip_off = np.concatenate(offsets).astype(np.float32)
    n_parcels = n_strips * k_max

    # Per-parcel attributes, gathered per pixel through the parcel id.
    weights = np.array([t[3] for t in _FIELD_TYPES])
    ftype = rng.choice(len(_FIELD_TYPES), size=n_parcels, p=weights / weights.sum())
    base = np.array([t[0] for t in _FIELD_TYPES], np.float32)[ftype]
    base *= rng.normal(1.0, 0.06, (n_parcels, 1)).astype(np.float32)
    base += rng.normal(0.0, 4.0, (n_parcels, 3)).astype(np.float32)
    amp = np.array([t[1] for t in _FIELD_TYPES], np.float32)[ftype]
    tram = np.array([t[2] for t in _FIELD_TYPES])[ftype] & (rng.random(n_parcels) < 0.8)
    tram_period = np.where(tram, rng.uniform(48, 96, n_parcels), 1e9).astype(np.float32)
    # Machinery works along the long side mostly, sometimes across or diagonally.
    row_ang = rng.choice([0.0, math.pi / 2, math.pi / 4], size=n_parcels, p=[0.7, 0.2, 0.1])
    row_ang = row_ang + rng.normal(0, 0.02, n_parcels)
    row_c, row_s = np.cos(row_ang).astype(np.float32), np.sin(row_ang).astype(np.float32)
    freq = (2 * math.pi / rng.uniform(3.5, 9.0, n_parcels)).astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi, n_parcels).astype(np.float32)
    # Patchiness (soil moisture, thin crop) varies per parcel and stops at its boundary;
    # one scene-wide field would read as cloud shadows.
    patch_amp = rng.uniform(0.0, 0.08, n_parcels).astype(np.float32)
    wood_flag = rng.random(n_parcels) < 0.04

    patches = _fbm(h, w, 70.0, rng, 3)
    grain = _noise(h, w, 2.0, rng)
    image = np.empty((h, w, 3), np.float32)
    parcel = np.empty((h, w), np.int32)
    region_map = np.zeros((h, w), np.int32) if cuts else None
    for y0, y1 in _bands(h):
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        if region_map is None:
            u = xs * cos_t[0] + ys * sin_t[0]
            v = ys * cos_t[0] - xs * sin_t[0]
            lut_idx = (u + np.float32(diag)).astype(np.int32)
        else:
            band_regions = region_map[y0:y1]
            for i, ((px, py), ang) in enumerate(cuts):
                side = (ys - np.float32(py)) * np.float32(math.cos(ang))
                side = side - (xs - np.float32(px)) * np.float32(math.sin(ang))
                band_regions |= (side > 0).astype(np.int32) << i
            cr, sr = cos_t[band_regions], sin_t[band_regions]
            u = xs * cr + ys * sr
            v = ys * cr - xs * sr
            lut_idx = (u + np.float32(diag)).astype(np.int32) + band_regions * np.int32(lut_len)
        strip = lut_all[lut_idx]
        seg = ((v + np.float32(diag) + strip_off[strip]) / strip_len[strip]).astype(np.int32)
        p = strip * np.int32(k_max) + seg
        parcel[y0:y1] = p

        coord = u * row_c[p] + v * row_s[p]
        shade = np.sin(coord * freq[p] + phase[p])
        shade *= amp[p]
        shade += np.float32(1.0)
        # Tramlines: the unsown wheel tracks of the sprayer, a few metres apart.
        shade[np.mod(coord, tram_period[p]) < 2.5] *= np.float32(0.84)
        shade += patch_amp[p] * patches[y0:y1]
        shade += np.float32(0.035) * grain[y0:y1]
        band = image[y0:y1]
        np.take(base, p, axis=0, out=band)
        band *= shade[..., None]
    del patches, grain

    # Balks: grassy strips a couple of pixels wide where parcels meet.
    edge = np.zeros((h, w), np.uint8)
    edge[:, 1:] |= (parcel[:, 1:] != parcel[:, :-1]).view(np.uint8)
    edge[1:, :] |= (parcel[1:, :] != parcel[:-1, :]).view(np.uint8)
    balk = np.asarray(cv2.dilate(edge, np.ones((2, 2), np.uint8)), np.uint8).view(bool)
    tone = rng.normal(1.0, 0.05, (int(balk.sum()), 1)).astype(np.float32)
    image[balk] = np.asarray(_BALK, np.float32) * tone
    return _Fields(
        image=image,
        wood_parcel=wood_flag[parcel],
        region_theta=region_theta,
        region_map=region_map,
        cuts=cuts,
    )


def _crown_height(h: int, w: int, rng: np.random.Generator) -> FloatImage:
    """Canopy height field: crowns 2-5 m across (8-20 px) on top of stand-scale undulation."""
    height = np.float32(0.5) * _noise(h, w, 6.0, rng)
    height += np.float32(0.3) * _noise(h, w, 12.0, rng)
    height += np.float32(0.2) * _noise(h, w, 3.0, rng)
    height += np.float32(0.25) * _noise(h, w, 60.0, rng)
    return height


def _woodland(
    fields: _Fields, crowns: FloatImage, river_band: BoolImage, rng: np.random.Generator
) -> BoolImage:
    """Forest mask: ragged blobs, whole forested parcels and trees along the river."""
    h, w = crowns.shape
    cover = float(rng.uniform(0.1, 0.3))
    blob = _fbm(h, w, float(np.clip(0.35 * min(h, w), 150, 1400)), rng, 5)
    # Crown-scale bumps on the threshold: single crowns stick out of the forest edge.
    blob += np.float32(0.07) * crowns
    thr = np.quantile(blob[::8, ::8], 1.0 - cover)
    wood: BoolImage = (blob > thr) | fields.wood_parcel
    del blob
    if river_band.any():
        wood |= river_band & (_noise(h, w, 40.0, rng) + np.float32(0.15) * crowns > 0.2)
    return wood


def _paint_woodland(
    image: FloatImage,
    wood: BoolImage,
    crowns: FloatImage,
    sun: tuple[float, float],
    shadow_len: float,
    rng: np.random.Generator,
) -> None:
    """Canopy of hill-shaded crowns over `wood`, and the forest's shadow beside it."""
    h, w = wood.shape
    # The forest edge casts a long shadow. Only the tallest crowns reach its far end, so the
    # end is ragged but stays attached to the trees that cast it.
    shade = np.zeros((h, w), bool)
    tall = _noise(h, w, 24.0, rng)  # groups of taller trees
    n_steps = max(2, int(shadow_len / 2.5))
    for i in range(1, n_steps + 1):
        frac = i / n_steps
        src = wood if frac <= 0.6 else wood & (tall > (frac - 0.6) * 4.0 - 0.8)
        _or_shifted(
            shade, src, round(-sun[0] * shadow_len * frac), round(-sun[1] * shadow_len * frac)
        )
    shade &= ~wood
    image[shade] *= np.float32(0.58)
    del shade

    # Lambert-like shading of the crown height field: sun-facing flanks lit, far sides dark.
    slope = _f32(cv2.Sobel(crowns, cv2.CV_32F, 1, 0, ksize=3))
    slope *= np.float32(sun[0])
    slope += np.float32(sun[1]) * _f32(cv2.Sobel(crowns, cv2.CV_32F, 0, 1, ksize=3))
    slope *= np.float32(1.0 / max(float(slope[::7, ::7].std()), 1e-6))
    mix = _noise(h, w, 300.0, rng)
    decid, conif = np.asarray(_DECIDUOUS, np.float32), np.asarray(_CONIFER, np.float32)
    for y0, y1 in _bands(h):
        idx = np.nonzero(wood[y0:y1])
        c = crowns[y0:y1][idx]
        light = 1.0 + 0.12 * slope[y0:y1][idx] + 0.16 * c
        # Gaps between crowns fall into deep shadow.
        light[c < -0.95] *= np.float32(0.58)
        # Stands of deciduous and coniferous trees.
        m = np.clip(0.5 + 0.45 * mix[y0:y1][idx], 0.0, 1.0)[:, None]
        colour = m * decid + (1 - m) * conif
        image[y0:y1][idx] = colour * np.clip(light, 0.35, 1.6)[:, None]


def _pond(mask: ByteImage, keepout: ByteImage, rng: np.random.Generator, force: bool) -> bool:
    """One pond with a noisy shoreline, drawn only inside its bounding box.

    Ponds avoid `keepout` (roads and their verges) unless `force` is set.
    """
    h, w = mask.shape
    big = rng.random() < 0.15
    a = float(rng.uniform(150, 400) if big else rng.uniform(35, 150))
    a = min(a, 0.3 * min(h, w)) + 4
    b = a * float(rng.uniform(0.45, 1.0))
    ang = float(rng.uniform(0, math.pi))
    cx, cy = float(rng.uniform(0.1, 0.9) * w), float(rng.uniform(0.1, 0.9) * h)
    r = int(a * 1.4) + 2
    x0, x1 = max(int(cx) - r, 0), min(int(cx) + r, w)
    y0, y1 = max(int(cy) - r, 0), min(int(cy) + r, h)
    if x1 <= x0 or y1 <= y0:
        return False
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(ang), math.sin(ang)
    rr = ((dx * c + dy * s) / a) ** 2 + ((dy * c - dx * s) / b) ** 2
    rr += 0.25 * _noise(y1 - y0, x1 - x0, max(a / 2, 4.0), rng)
    inside = rr < 1.0
    if not inside.any() or (not force and (inside & (keepout[y0:y1, x0:x1] > 0)).any()):
        return False
    # Only the mask here: `_paint_water` colours all water at once, shallows included.
    mask[y0:y1, x0:x1][inside] = WATER
    return True


def _paint_water(image: FloatImage, mask: ByteImage, rng: np.random.Generator) -> None:
    """Dark, nearly textureless water, lighter in the shallows, with a ring of reeds."""
    h, w = mask.shape
    rows = np.flatnonzero((mask == WATER).any(axis=1))
    if rows.size == 0:
        return
    cols = np.flatnonzero((mask == WATER).any(axis=0))
    # Work in the bounding box of the water (plus the reed margin): ponds are small.
    y0, y1 = max(int(rows[0]) - 16, 0), min(int(rows[-1]) + 17, h)
    x0, x1 = max(int(cols[0]) - 16, 0), min(int(cols[-1]) + 17, w)
    m_win, i_win = mask[y0:y1, x0:x1], image[y0:y1, x0:x1]
    wh, ww = m_win.shape
    water = m_win == WATER

    # Reeds and wet grass line the banks; they are not water, so they stay background.
    land_dist = _f32(cv2.distanceTransform((~water).view(np.uint8), cv2.DIST_L2, 3))
    reed = (land_dist < 5.0 + 5.0 * _noise(wh, ww, 12.0, rng)) & (m_win == BACKGROUND)
    del land_dist
    tone = rng.normal(1.0, 0.08, (int(reed.sum()), 1)).astype(np.float32)
    i_win[reed] = np.asarray((96, 112, 68), np.float32) * tone
    del reed

    deep = np.array([34, 48, 54], np.float32) * np.float32(rng.normal(1.0, 0.08))
    deep += np.array([0, 1, 0], np.float32) * np.float32(rng.uniform(0, 14))
    shallow = np.array([62, 76, 64], np.float32)
    dist = _f32(cv2.distanceTransform(water.view(np.uint8), cv2.DIST_L2, 3))
    idx = np.nonzero(water)
    f = np.clip(dist[idx] / 8.0, 0.0, 1.0)[:, None]
    ripple = 1.0 + 0.03 * _noise(wh, ww, 60.0, rng)[idx][:, None]
    i_win[idx] = (f * deep + (1 - f) * shallow) * ripple


@dataclass
class _Road:
    pts: Points
    width: int
    village: list[tuple[float, float]]  # arc-length intervals dense with houses


def _arc_length(pts: Points) -> npt.NDArray[np.float64]:
    seg = np.hypot(*np.diff(pts, axis=0).T)
    return np.concatenate([[0.0], np.cumsum(seg)])


def _paint_roads(
    image: FloatImage,
    mask: ByteImage,
    roads: list[_Road],
    tracks: list[tuple[Points, int, int]],
    region_map: npt.NDArray[np.int32] | None,
    rng: np.random.Generator,
) -> None:
    """Gravel field tracks, then asphalt roads with gravel shoulders, into image and mask."""
    if tracks:
        h, w = mask.shape
        layer = np.zeros((h, w), np.uint8)
        for pts, width, region in tracks:
            _polylines(layer, [pts], region + 1, width)
        # A track belongs to one field system: it stops where that system ends, and at
        # water and forest edges.
        own = layer == (1 if region_map is None else region_map + 1)
        own &= mask == BACKGROUND
        n_px = int(own.sum())
        tone = rng.normal(1.0, 0.05, (n_px, 1)).astype(np.float32)
        image[own] = _pick(_DIRT, rng) * tone
        mask[own] = ROAD
    for road in roads:
        shoulder = _pick(_GRAVEL, rng) * np.float32(0.95)
        # Shoulders are unpaved verge: drawn on the image only, they stay background.
        _polylines(image, [road.pts], tuple(float(v) for v in shoulder), road.width + 4)
    for road in roads:
        colour = _pick(_ASPHALT, rng)
        _polylines(image, [road.pts], tuple(float(v) for v in colour), road.width)
        _polylines(mask, [road.pts], ROAD, road.width)


def _rect(cx: float, cy: float, along: float, across: float, ang: float) -> Points:
    """Corners of a rectangle centred at (cx, cy), `along` wide in direction `ang`."""
    a = np.array([math.cos(ang), math.sin(ang)]) * along / 2
    n = np.array([-math.sin(ang), math.cos(ang)]) * across / 2
    c = np.array([cx, cy])
    return np.stack([c - a - n, c + a - n, c + a + n, c - a + n])


def _farmstead(
    image: FloatImage,
    mask: ByteImage,
    centre: tuple[float, float],
    ang: float,
    outward: tuple[float, float],
    sun: tuple[float, float],
    shadow_len: float,
    rng: np.random.Generator,
) -> bool:
    """House (plus maybe a barn) with its yard, roof shading and shadow; False if it won't fit."""
    h, w = mask.shape
    ox, oy = outward
    house_along = float(rng.uniform(34, 62))
    house_across = float(rng.uniform(36, 58))
    cx, cy = centre[0] + ox * house_across / 2, centre[1] + oy * house_across / 2
    # Houses stand with their long side or their gable to the road.
    house_ang = ang + (math.pi / 2 if rng.random() < 0.35 else 0.0) + rng.normal(0, 0.05)
    parts = [(_rect(cx, cy, house_along, house_across, house_ang), True, _ROOF_HOUSE)]
    depth = house_across
    if rng.random() < 0.7:
        barn_along = float(rng.uniform(50, 130))
        barn_across = float(rng.uniform(28, 48))
        gap = float(rng.uniform(14, 40))
        bx = cx + ox * (house_across / 2 + gap + barn_across / 2) + rng.normal(0, 8)
        by = cy + oy * (house_across / 2 + gap + barn_across / 2) + rng.normal(0, 8)
        gable = bool(rng.random() < 0.6)
        parts.append(
            (_rect(bx, by, barn_along, barn_across, ang + rng.normal(0, 0.04)), gable, _ROOF_BARN)
        )
        depth += gap + barn_across
    yard_along = max(house_along, 60.0) + float(rng.uniform(20, 60))
    yard_across = depth + float(rng.uniform(16, 40))
    ycx = centre[0] + ox * (yard_across / 2 - 4)
    ycy = centre[1] + oy * (yard_across / 2 - 4)
    yard = _rect(ycx, ycy, yard_along, yard_across, ang)

    allpts = np.concatenate([yard] + [p[0] for p in parts])
    pad = int(shadow_len) + 4
    x0 = max(int(allpts[:, 0].min()) - pad, 0)
    x1 = min(int(allpts[:, 0].max()) + pad + 1, w)
    y0 = max(int(allpts[:, 1].min()) - pad, 0)
    y1 = min(int(allpts[:, 1].max()) + pad + 1, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return False
    m_win = mask[y0:y1, x0:x1]
    i_win = image[y0:y1, x0:x1]
    off = np.array([x0, y0])

    def fill(poly: Points) -> BoolImage:
        layer = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(layer, [np.round(poly - off).astype(np.int32)], 1)
        return layer.view(bool)

    yard_px = fill(yard)
    footprint = np.zeros_like(yard_px)
    for poly, _, _ in parts:
        footprint |= fill(poly)
    blocked = (m_win == WATER) | (m_win == ROAD) | (m_win == BUILDING)
    if not footprint.any() or (footprint & blocked).any():
        return False
    # Farms are cleared land: refuse sites that are mostly forest.
    if (yard_px & (m_win == WOODLAND)).sum() > 0.4 * max(int(yard_px.sum()), 1):
        return False

    free_yard = yard_px & ~blocked
    i_win[free_yard] = _pick(_YARD, rng) * (1.0 + rng.normal(0, 0.03, (int(free_yard.sum()), 1)))
    m_win[free_yard] = BACKGROUND

    sdx, sdy = -sun[0] * shadow_len, -sun[1] * shadow_len
    for poly, _, _ in parts:
        hull = cv2.convexHull(
            np.round(np.concatenate([poly, poly + np.array([sdx, sdy])]) - off).astype(np.int32)
        )
        layer = np.zeros(yard_px.shape, np.uint8)
        cv2.fillPoly(layer, [hull], 1)
        shade = layer.view(bool) & ~footprint & (m_win != BUILDING)
        i_win[shade] *= np.float32(0.55)

    # Roofs are painted through the same rasterised footprints that go into the mask, so
    # every roof pixel is a building pixel and vice versa.
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32)
    for poly, gable, palette in parts:
        roof = _pick(palette, rng)
        px = fill(poly)
        local = poly - off
        if gable:
            # Ridge along the long side: the two roof planes face across it, and the one
            # facing the sun is lit.
            e1, e2 = local[1] - local[0], local[3] - local[0]
            across = e2 if np.hypot(*e1) >= np.hypot(*e2) else e1
            n = across / max(float(np.hypot(*across)), 1e-6)
            cx, cy = local.mean(axis=0)
            facing_n = ((xx - np.float32(cx)) * np.float32(n[0])) + (
                (yy - np.float32(cy)) * np.float32(n[1])
            ) > 0
            lit_n = float(n @ np.asarray(sun)) > 0
            i_win[px & facing_n] = roof * np.float32(1.12 if lit_n else 0.8)
            i_win[px & ~facing_n] = roof * np.float32(0.8 if lit_n else 1.12)
        else:
            # Flat roof with a darker parapet rim.
            inner = np.asarray(cv2.erode(px.view(np.uint8), np.ones((3, 3), np.uint8)), np.uint8)
            i_win[px] = roof * np.float32(0.75)
            i_win[inner.view(bool)] = roof
        m_win[px] = BUILDING
    return True


def _place_buildings(
    image: FloatImage,
    mask: ByteImage,
    roads: list[_Road],
    sun: tuple[float, float],
    rng: np.random.Generator,
) -> None:
    """Farmsteads along the roads: dense in villages, scattered elsewhere."""
    h, w = mask.shape
    shadow_len = float(rng.uniform(6, 12))
    placed = 0
    for road in roads:
        pts = road.pts
        if len(pts) < 2:
            continue
        arc = _arc_length(pts)
        s = float(rng.uniform(0, 80))
        while s < arc[-1]:
            in_village = any(a <= s <= b for a, b in road.village)
            i = min(int(np.searchsorted(arc, s, side="right")) - 1, len(pts) - 2)
            t = (s - arc[i]) / max(arc[i + 1] - arc[i], 1e-6)
            px, py = pts[i] + t * (pts[i + 1] - pts[i])
            dx, dy = pts[i + 1] - pts[i]
            ang = math.atan2(dy, dx)
            if 0 <= px < w and 0 <= py < h:
                for side in (-1.0, 1.0):
                    if rng.random() < (0.8 if in_village else 0.12):
                        nx, ny = -math.sin(ang) * side, math.cos(ang) * side
                        setback = road.width / 2 + 4 + float(rng.uniform(6, 30))
                        centre = (px + nx * setback, py + ny * setback)
                        placed += _farmstead(
                            image, mask, centre, ang, (nx, ny), sun, shadow_len, rng
                        )
            s += float(rng.uniform(70, 130)) if in_village else float(rng.uniform(120, 400))
    if placed == 0 and roads and len(roads[0].pts) >= 2:
        # Every scene must show a building: try harder along the main road.
        pts = roads[0].pts
        for _ in range(200):
            i = int(rng.integers(len(pts) - 1))
            (px, py), (qx, qy) = pts[i], pts[i + 1]
            ang = math.atan2(qy - py, qx - px)
            side = 1.0 if rng.random() < 0.5 else -1.0
            nx, ny = -math.sin(ang) * side, math.cos(ang) * side
            centre = (px + nx * (roads[0].width / 2 + 6), py + ny * (roads[0].width / 2 + 6))
            if (
                0 <= centre[0] < w
                and 0 <= centre[1] < h
                and _farmstead(image, mask, centre, ang, (nx, ny), sun, shadow_len, rng)
            ):
                break


def _road_network(
    h: int, w: int, fields: _Fields, rng: np.random.Generator
) -> tuple[list[_Road], list[tuple[Points, int, int]]]:
    """Roads (with their villages) and gravel field tracks of a scene, as polylines."""
    diag = math.hypot(h, w)
    # Line features cross a scene in numbers proportional to its side, not its area.
    side = max(math.sqrt(h * w / (1600 * 1700)), 1.0)
    # A winding main road across the strips (villages line it and the strips run away from
    # it, as in Polish street villages), a straight road on every cut between field systems.
    start = (float(rng.uniform(0.25, 0.75) * w), float(rng.uniform(0.25, 0.75) * h))
    lines = [_random_walk(start, fields.region_theta[0], 30.0, 0.04, diag, rng)]
    lines += [_straight(p, ang, diag, 30.0) for p, ang in fields.cuts]
    for _ in range(int(rng.poisson(0.5 * side))):
        p = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        # At least 30 degrees off the main road, so the two do not run side by side.
        heading = fields.region_theta[0] + float(rng.uniform(math.pi / 6, 5 * math.pi / 6))
        lines.append(_random_walk(p, heading, 30.0, 0.05, diag, rng))
    roads: list[_Road] = []
    for k, line in enumerate(lines):
        pts = _clip_polyline(line, h, w, 100)
        length = float(_arc_length(pts)[-1]) if len(pts) >= 2 else 0.0
        n_villages = int(rng.integers(1, 3)) if k == 0 else int(rng.random() < 0.5)
        villages = []
        for _ in range(n_villages + int(length // 4000)):
            a = float(rng.uniform(0, max(length, 1.0)))
            villages.append((a, a + float(rng.uniform(400, 1400))))
        width_px = int(rng.uniform(12, 17)) if k == 0 else int(rng.uniform(10, 15))
        roads.append(_Road(pts=pts, width=width_px, village=villages))

    # Field tracks run along the strips of one field system and end somewhere in the fields.
    tracks: list[tuple[Points, int, int]] = []
    for _ in range(int(rng.integers(1, 4)) + int(rng.poisson(2.0 * (side - 1)))):
        cx, cy = int(rng.integers(w)), int(rng.integers(h))
        region = 0 if fields.region_map is None else int(fields.region_map[cy, cx])
        along = fields.region_theta[region] + math.pi / 2
        line = _straight((cx, cy), along, float(rng.uniform(200, 800)), 30.0)
        tracks.append((_clip_polyline(line, h, w, 50), int(rng.uniform(6, 9)), region))
    return roads, tracks


def synth_scene(height: int, width: int, rng: np.random.Generator) -> tuple[ByteImage, ByteImage]:
    """(H, W, 3) uint8 RGB image and (H, W) uint8 class mask."""
    if height <= 0 or width <= 0:
        raise ValueError(f"scene size must be positive, got {height}x{width}")
    h, w = int(height), int(width)
    diag = math.hypot(h, w)
    area_units = max(h * w / (1600 * 1700), 1.0)  # object counts grow with area, not faster
    # Summer sun from the south-east to south-west: shadows point north-ish (image up).
    azimuth = float(rng.uniform(math.radians(135), math.radians(225)))
    sun = (math.sin(azimuth), -math.cos(azimuth))  # unit vector towards the sun, image coords

    # Layers are painted bottom-up, each writing image and mask together, so the mask always
    # holds the class of what is drawn on top: fields, woodland, water, roads, buildings.
    fields = _fields(h, w, rng)
    image = fields.image
    mask = np.zeros((h, w), np.uint8)

    # Geometry first: rivers decide where riparian trees grow, roads where ponds may not lie.
    rivers: list[tuple[Points, int]] = []
    n_rivers = int(rng.random() < 0.4) + int(rng.random() < 0.3 * (area_units - 1))
    for _ in range(n_rivers):
        start = (float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.2, 0.8) * h))
        pts = _random_walk(start, float(rng.uniform(0, math.pi)), 25.0, 0.12, diag, rng)
        rivers.append((_clip_polyline(pts, h, w, 200), int(rng.uniform(22, 64))))
    roads, tracks = _road_network(h, w, fields, rng)

    river_band = np.zeros((h, w), np.uint8)
    for pts, width_px in rivers:
        _polylines(river_band, [pts], 1, width_px + 2 * int(rng.uniform(16, 50)))
    crowns = _crown_height(h, w, rng)
    wood = _woodland(fields, crowns, river_band.view(bool), rng)
    del river_band
    _paint_woodland(image, wood, crowns, sun, float(rng.uniform(18, 36)), rng)
    mask[wood] = WOODLAND
    del wood, crowns

    # Water: at least one pond so every scene has the class, more on bigger scenes.
    keepout = np.zeros((h, w), np.uint8)
    for road in roads:
        _polylines(keepout, [road.pts], 1, road.width + 40)
    n_ponds = 1 + int(rng.poisson(0.8 * area_units))
    for i in range(n_ponds):
        for attempt in range(20):
            if _pond(mask, keepout, rng, force=i == 0 and attempt == 19):
                break
    del keepout
    for pts, width_px in rivers:
        _polylines(mask, [pts], WATER, width_px)
    _paint_water(image, mask, rng)

    _paint_roads(image, mask, roads, tracks, fields.region_map, rng)
    _place_buildings(image, mask, roads, sun, rng)

    # Sensor: slow illumination drift, per-scene colour balance, noise and optics blur.
    illumination = _noise(h, w, 500.0, rng)
    illumination *= np.float32(0.035)
    illumination += np.float32(1.0)
    balance = rng.normal(1.0, 0.03, 3).astype(np.float32)
    for y0, y1 in _bands(h):
        band = image[y0:y1]
        band *= illumination[y0:y1, :, None]
        band *= balance
        band += np.float32(2.2) * rng.standard_normal(band.shape, dtype=np.float32)
    del illumination
    cv2.GaussianBlur(image, (0, 0), 0.65, dst=image)
    out = np.empty((h, w, 3), np.uint8)
    for y0, y1 in _bands(h):
        out[y0:y1] = np.clip(image[y0:y1] + np.float32(0.5), 0, 255)
    return out, mask


# --------------------------------------------------------------------------------------------
# Archive
# --------------------------------------------------------------------------------------------


def _scene_names(n: int, rng: np.random.Generator) -> list[str]:
    """Distinct map-sheet codes like M-33-20-D-c-4-2 (1:10 000 sheets of the 1992 grid)."""
    names: set[str] = set()
    while len(names) < n:
        names.add(
            f"{'MN'[int(rng.integers(2))]}-{33 + int(rng.integers(2))}-{int(rng.integers(1, 145))}"
            f"-{'ABCD'[int(rng.integers(4))]}-{'abcd'[int(rng.integers(4))]}"
            f"-{int(rng.integers(1, 5))}-{int(rng.integers(1, 5))}"
        )
    return sorted(names)


def _tile_sort_key(tile_id: str) -> tuple[str, int]:
    scene, k = tile_id.rsplit("_", 1)
    return scene, int(k)


def _split_counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Tiles per split: largest remainder rounding, at least one each when n >= 3."""
    raw = [f * n for f in fractions]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(3), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    if n >= 3:
        for i in range(3):
            while counts[i] == 0:
                counts[max(range(3), key=lambda j: counts[j])] -= 1
                counts[i] += 1
    return counts


def _write_geotiffs(
    folder: Path, name: str, image: ByteImage, mask: ByteImage, origin: tuple[float, float]
) -> tuple[Path, Path]:
    """images/<name>.tif and masks/<name>.tif under `folder`, georeferenced like the real data."""
    import rasterio  # here, not above: painting needs no GDAL (painted_tile_store)
    from rasterio.transform import Affine

    h, w = mask.shape
    common = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "dtype": "uint8",
        "crs": LANDCOVERAI_CRS,
        # Same as rasterio.transform.from_origin, whose Affine `*` now warns on every call.
        "transform": Affine(PIXEL_SIZE_M, 0.0, origin[0], 0.0, -PIXEL_SIZE_M, origin[1]),
        "compress": "deflate",
        "predictor": 2,
        "tiled": True,
        "blockxsize": _GTIFF_BLOCK,
        "blockysize": _GTIFF_BLOCK,
    }
    img_path = folder / "images" / f"{name}.tif"
    mask_path = folder / "masks" / f"{name}.tif"
    img_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        img_path, "w", count=3, photometric="RGB", interleave="pixel", **common
    ) as dst:
        dst.write(np.moveaxis(image, 2, 0))
    with rasterio.open(mask_path, "w", count=1, **common) as dst:
        dst.write(mask, 1)
    return img_path, mask_path


def _zip_info(name: str, compress: int, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
    info.compress_type = compress
    info.create_system = 3  # unix, whatever the host: the attributes below are unix ones
    info.external_attr = 0o100644 << 16
    info.file_size = size
    return info


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Layout:
    """Scenes, their georeference origins, the tiles' splits and each scene's random stream."""

    scenes: list[SceneSpec]
    origins: list[tuple[float, float]]
    splits: dict[str, list[str]]
    scene_seeds: list[np.random.SeedSequence]


def _layout(
    n_scenes: int,
    height: int,
    width: int,
    tile_size: int,
    split_fractions: tuple[float, float, float],
    seed: int,
) -> _Layout:
    if n_scenes < 1:
        raise ValueError(f"n_scenes must be >= 1, got {n_scenes}")
    if tile_size <= 0 or height < tile_size or width < tile_size:
        raise ValueError(f"scene {height}x{width} must be at least one tile of {tile_size}")
    if len(split_fractions) != 3 or any(f < 0 for f in split_fractions):
        raise ValueError(f"split_fractions must be 3 non-negative numbers: {split_fractions}")
    if not math.isclose(sum(split_fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must sum to 1, got {sum(split_fractions)}")
    # Independent streams: layout, split and every scene can change without shifting the rest.
    layout_seq, split_seq, *scene_seqs = np.random.SeedSequence(seed).spawn(n_scenes + 2)
    layout = np.random.default_rng(layout_seq)
    scenes: list[SceneSpec] = []
    origins: list[tuple[float, float]] = []
    for name in _scene_names(n_scenes, layout):
        # +-15 % around the requested size so partial grid positions (id gaps) occur.
        sh = max(tile_size, round(height * layout.uniform(0.85, 1.15)))
        sw = max(tile_size, round(width * layout.uniform(0.85, 1.15)))
        scenes.append(SceneSpec(name=name, height=sh, width=sw))
        origins.append(
            (float(layout.integers(400_000, 700_000)), float(layout.integers(300_000, 800_000)))
        )
    tile_ids = [
        f"{spec.name}_{k}"
        for spec in scenes
        for k, _, _ in official_tile_grid(spec.height, spec.width, tile_size)
    ]
    order = np.random.default_rng(split_seq).permutation(len(tile_ids))
    bounds = np.cumsum([0, *_split_counts(len(tile_ids), split_fractions)])
    splits = {
        split: sorted(
            (tile_ids[int(i)] for i in order[bounds[j] : bounds[j + 1]]), key=_tile_sort_key
        )
        for j, split in enumerate(SPLIT_NAMES)
    }
    return _Layout(scenes, origins, splits, scene_seqs)


def write_landcoverai_archive(
    out_zip: Path,
    *,
    n_scenes: int = 6,
    height: int = 1600,
    width: int = 1700,
    tile_size: int = 512,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> SyntheticArchive:
    """Write a byte-for-byte reproducible fake `landcover.ai.v1.zip` to `out_zip`."""
    plan = _layout(n_scenes, height, width, tile_size, split_fractions, seed)
    scenes, origins, splits, scene_seqs = plan.scenes, plan.origins, plan.splits, plan.scene_seeds
    out_zip = Path(out_zip)

    pixel_counts = np.zeros(len(LANDCOVERAI_CLASS_NAMES), np.int64)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="landcoverai-synth-") as tmp:
        folder = Path(tmp)
        members: dict[str, tuple[Path | bytes, int]] = {}
        for spec, origin, seq in zip(scenes, origins, scene_seqs, strict=True):
            image, mask = synth_scene(spec.height, spec.width, np.random.default_rng(seq))
            pixel_counts += np.bincount(mask.ravel(), minlength=len(pixel_counts))[
                : len(pixel_counts)
            ]
            img_path, mask_path = _write_geotiffs(folder, spec.name, image, mask, origin)
            del image, mask
            members[f"images/{spec.name}.tif"] = (img_path, zipfile.ZIP_STORED)
            members[f"masks/{spec.name}.tif"] = (mask_path, zipfile.ZIP_STORED)
        for split, ids in splits.items():
            text = "".join(f"{tile_id}\n" for tile_id in ids).encode()
            members[f"{split}.txt"] = (text, zipfile.ZIP_DEFLATED)

        # Atomic: readers see the old archive or the complete new one, never a partial zip.
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{out_zip.name}.", suffix=".tmp", dir=out_zip.parent
        )
        tmp_zip = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                with zipfile.ZipFile(fh, "w") as zf:
                    for name in sorted(members):
                        source, compress = members[name]
                        if isinstance(source, bytes):
                            zf.writestr(_zip_info(name, compress, len(source)), source)
                            continue
                        info = _zip_info(name, compress, source.stat().st_size)
                        with source.open("rb") as src, zf.open(info, "w") as dst:
                            for chunk in iter(lambda: src.read(1 << 20), b""):
                                dst.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            tmp_zip.chmod(0o644)
            os.replace(tmp_zip, out_zip)
        except BaseException:
            tmp_zip.unlink(missing_ok=True)
            raise

    return SyntheticArchive(
        path=out_zip,
        md5=_md5(out_zip),
        scenes=scenes,
        splits=splits,
        class_pixel_counts={
            name: int(n) for name, n in zip(LANDCOVERAI_CLASS_NAMES, pixel_counts, strict=True)
        },
    )


def write_archive_from_params(
    out_zip: Path, spec: SyntheticParams, tile_size: int
) -> SyntheticArchive:
    """The archive the ``synthetic`` params section describes (the demo's synth stage)."""
    train, val, test = spec.split_fractions
    return write_landcoverai_archive(
        out_zip,
        n_scenes=spec.scenes,
        height=spec.height,
        width=spec.width,
        tile_size=tile_size,
        split_fractions=(train, val, test),
        seed=spec.seed,
    )


def synthetic_tile_store(
    work: Path,
    *,
    n_scenes: int = 2,
    height: int = 1100,
    width: int = 1200,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 3,
) -> Path:
    """A synthetic archive tiled into a LandCover.ai tile store at ``work/tiles`` (512 px).

    For tests and benchmarks that need a store without running the download and tile flows.
    """
    from pipeline.data import tiling
    from pipeline.data.catalog import LANDCOVERAI, landcoverai_records
    from pipeline.data.store import StoreMeta

    work.mkdir(parents=True, exist_ok=True)
    archive = write_landcoverai_archive(
        work / "landcover.ai.v1.zip",
        n_scenes=n_scenes,
        height=height,
        width=width,
        split_fractions=split_fractions,
        seed=seed,
    )
    with zipfile.ZipFile(archive.path) as zf:
        zf.extractall(work / "raw")
    meta = StoreMeta(dataset="landcoverai", tile_size=512, class_names=LANDCOVERAI.class_names)
    plan = tiling.plan_tiling(landcoverai_records(work / "raw"), meta)
    build = tiling.prepare_store(plan, work / "tiles")
    for scene in build.pending:
        tiling.tile_scene(scene, build.directory, meta)
    tiling.finalize_store(plan, work / "tiles")
    return work / "tiles"


def painted_tile_store(
    out: Path,
    *,
    n_scenes: int = 2,
    height: int = 1100,
    width: int = 1200,
    tile_size: int = 512,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    label_fractions: tuple[float, ...] = (1.0, 0.5, 0.25),
    seed: int = 3,
) -> Path:
    """The tiles ``synthetic_tile_store`` cuts from the same scenes, painted straight into a
    tile store at ``out``: no GeoTIFF, no archive, no GDAL (the GPU machine has no rasterio).

    Rows follow the scenes in name order and each scene's tiles in LandCover.ai's numbering;
    the training split carries the nested label subsets (``in_frac_<f>``).
    """
    import pandas as pd

    from pipeline.data import store
    from pipeline.data.store import StoreMeta

    plan = _layout(n_scenes, height, width, tile_size, split_fractions, seed)
    split_of = {tile: split for split, tiles in plan.splits.items() for tile in tiles}
    grids = [official_tile_grid(s.height, s.width, tile_size) for s in plan.scenes]
    store.allocate(out, sum(len(g) for g in grids), tile_size, has_masks=True)
    images, masks = store.open_arrays(out, mode="r+")
    assert masks is not None
    rows: list[dict[str, object]] = []
    for spec, grid, seq in zip(plan.scenes, grids, plan.scene_seeds, strict=True):
        image, mask = synth_scene(spec.height, spec.width, np.random.default_rng(seq))
        for k, y, x in grid:
            row = len(rows)
            images[row] = image[y : y + tile_size, x : x + tile_size]
            masks[row] = mask[y : y + tile_size, x : x + tile_size]
            counts = np.bincount(masks[row].ravel(), minlength=len(LANDCOVERAI_CLASS_NAMES))
            rows.append(
                {
                    "tile_id": f"{spec.name}_{k}",
                    "scene": spec.name,
                    "k": k,
                    "y": y,
                    "x": x,
                    "split": split_of[f"{spec.name}_{k}"],
                    "row": row,
                    "labelled": True,
                    **{store.hist_column(c): int(n) for c, n in enumerate(counts)},
                }
            )
    images.flush()
    masks.flush()
    meta = StoreMeta(
        dataset="landcoverai",
        tile_size=tile_size,
        class_names=LANDCOVERAI_CLASS_NAMES,
        label_fractions=tuple(sorted(label_fractions, reverse=True)),
    )
    index = store.add_label_fractions(
        pd.DataFrame(rows), len(LANDCOVERAI_CLASS_NAMES), None, meta.label_fractions, 0
    )
    store.write_index(out, index, meta)
    return out
