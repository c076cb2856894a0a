"""The synthetic scenes' farmland: strip fields in field systems of their own orientation,
each parcel with its crop colour, machinery stripes, tramlines and grassy balks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.synthetic.drawing import (
    _BALK,
    _FIELD_TYPES,
    BoolImage,
    FloatImage,
    _bands,
    _fbm,
    _noise,
)


@dataclass
class _Fields:
    image: FloatImage
    wood_parcel: BoolImage
    region_theta: list[float]
    region_map: npt.NDArray[np.int32] | None
    cuts: list[tuple[tuple[float, float], float]]


@dataclass(frozen=True)
class _Strips:
    """Every region's strips, as one lookup table over u (a block of ``lut_len`` per region)."""

    lut: npt.NDArray[np.int32]
    length: FloatImage
    offset: FloatImage
    lut_len: int
    k_max: int  # parcels per strip, at most

    @property
    def n_parcels(self) -> int:
        return len(self.length) * self.k_max


@dataclass(frozen=True)
class _Parcels:
    """Per-parcel attributes, gathered per pixel through the parcel id."""

    base: FloatImage
    amp: FloatImage
    tram_period: FloatImage
    row_c: FloatImage
    row_s: FloatImage
    freq: FloatImage
    phase: FloatImage
    patch_amp: FloatImage
    wood_flag: BoolImage


def _field_systems(
    h: int, w: int, rng: np.random.Generator
) -> tuple[list[tuple[tuple[float, float], float]], list[float]]:
    """Straight cuts split the scene into field systems of different orientation, as roads do
    in real land consolidation (each cut carries a road later); one angle per system."""
    n_cuts = int(rng.integers(0, 2)) + int(math.sqrt(h * w) // 3000)
    cuts: list[tuple[tuple[float, float], float]] = []
    for _ in range(n_cuts):
        p = (float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.2, 0.8) * h))
        cuts.append((p, float(rng.uniform(0, math.pi))))
    return cuts, [float(rng.uniform(0, math.pi)) for _ in range(2**n_cuts)]


def _strip_tables(n_regions: int, diag: float, rng: np.random.Generator) -> _Strips:
    """Strips narrow in u, long in v. Every region has its own strip table over the whole range
    of u and v (|u|, |v| <= diag), so one lookup table serves all regions."""
    lut_len = int(2 * diag) + 2
    min_len, max_len = 300.0, 2200.0
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
    return _Strips(
        np.concatenate(luts),
        np.concatenate(lengths).astype(np.float32),
        np.concatenate(offsets).astype(np.float32),
        lut_len,
        int((2 * diag + max_len) / min_len) + 2,
    )


def _parcel_attributes(n_parcels: int, rng: np.random.Generator) -> _Parcels:
    """Each parcel's crop colour, machinery stripes, tramlines and patchiness."""
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
    return _Parcels(base, amp, tram_period, row_c, row_s, freq, phase, patch_amp, wood_flag)


def _fields(h: int, w: int, rng: np.random.Generator) -> _Fields:
    """Patchwork of strip fields, each with its own crop colour and machinery stripes."""
    diag = math.hypot(h, w)
    cuts, region_theta = _field_systems(h, w, rng)
    strips = _strip_tables(len(region_theta), diag, rng)
    parcels = _parcel_attributes(strips.n_parcels, rng)
    patches = _fbm(h, w, 70.0, rng, 3)
    grain = _noise(h, w, 2.0, rng)
    image = np.empty((h, w, 3), np.float32)
    parcel = np.empty((h, w), np.int32)
    region_map = np.zeros((h, w), np.int32) if cuts else None
    angles = (np.cos(region_theta).astype(np.float32), np.sin(region_theta).astype(np.float32))
    for y0, y1 in _bands(h):
        u, v, p = _parcel_band(y0, y1, w, diag, cuts, angles, region_map, strips)
        parcel[y0:y1] = p
        _shade_band(image[y0:y1], u, v, p, parcels, patches[y0:y1], grain[y0:y1])
    del patches, grain
    _balks(image, parcel, rng)
    return _Fields(
        image=image,
        wood_parcel=parcels.wood_flag[parcel],
        region_theta=region_theta,
        region_map=region_map,
        cuts=cuts,
    )


def _parcel_band(
    y0: int,
    y1: int,
    w: int,
    diag: float,
    cuts: list[tuple[tuple[float, float], float]],
    angles: tuple[FloatImage, FloatImage],
    region_map: npt.NDArray[np.int32] | None,
    strips: _Strips,
) -> tuple[FloatImage, FloatImage, npt.NDArray[np.int32]]:
    """Rows y0:y1 in each pixel's field-system frame (u across, v along the strips), and the
    parcel id of each pixel; the region map of those rows is filled in on the way."""
    cos_t, sin_t = angles
    xs = np.arange(w, dtype=np.float32)[None, :]
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
        lut_idx = (u + np.float32(diag)).astype(np.int32) + band_regions * np.int32(strips.lut_len)
    strip = strips.lut[lut_idx]
    seg = ((v + np.float32(diag) + strips.offset[strip]) / strips.length[strip]).astype(np.int32)
    return u, v, strip * np.int32(strips.k_max) + seg


def _shade_band(
    band: FloatImage,
    u: FloatImage,
    v: FloatImage,
    p: npt.NDArray[np.int32],
    parcels: _Parcels,
    patches: FloatImage,
    grain: FloatImage,
) -> None:
    """Each pixel's parcel colour, shaded by its machinery stripes, tramlines and patchiness."""
    coord = u * parcels.row_c[p] + v * parcels.row_s[p]
    shade = np.sin(coord * parcels.freq[p] + parcels.phase[p])
    shade *= parcels.amp[p]
    shade += np.float32(1.0)
    # Tramlines: the unsown wheel tracks of the sprayer, a few metres apart.
    shade[np.mod(coord, parcels.tram_period[p]) < 2.5] *= np.float32(0.84)
    shade += parcels.patch_amp[p] * patches
    shade += np.float32(0.035) * grain
    np.take(parcels.base, p, axis=0, out=band)
    band *= shade[..., None]


def _balks(image: FloatImage, parcel: npt.NDArray[np.int32], rng: np.random.Generator) -> None:
    """Grassy strips a couple of pixels wide where parcels meet."""
    edge = np.zeros(parcel.shape, np.uint8)
    edge[:, 1:] |= (parcel[:, 1:] != parcel[:, :-1]).view(np.uint8)
    edge[1:, :] |= (parcel[1:, :] != parcel[:-1, :]).view(np.uint8)
    balk = np.asarray(cv2.dilate(edge, np.ones((2, 2), np.uint8)), np.uint8).view(bool)
    tone = rng.normal(1.0, 0.05, (int(balk.sum()), 1)).astype(np.float32)
    image[balk] = np.asarray(_BALK, np.float32) * tone
