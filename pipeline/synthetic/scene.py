"""One synthetic rural scene: strip fields, woodland, water, roads and farmsteads, with its
class mask, pixel for pixel."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.synthetic.drawing import (
    _ASPHALT,
    _CONIFER,
    _DECIDUOUS,
    _DIRT,
    _GRAVEL,
    _ROOF_BARN,
    _ROOF_HOUSE,
    _YARD,
    BACKGROUND,
    BUILDING,
    ROAD,
    WATER,
    WOODLAND,
    BoolImage,
    ByteImage,
    FloatImage,
    Points,
    _bands,
    _clip_polyline,
    _f32,
    _fbm,
    _noise,
    _or_shifted,
    _pick,
    _polylines,
    _random_walk,
    _straight,
)
from pipeline.synthetic.fields import _Fields, _fields

# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


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


# A building: its footprint, whether its roof is gabled, its roof palette.
_Part = tuple[Points, bool, tuple[tuple[int, int, int], ...]]


def _farm_plan(
    centre: tuple[float, float], ang: float, outward: tuple[float, float], rng: np.random.Generator
) -> tuple[list[_Part], Points]:
    """A house (plus maybe a barn behind it) and the yard around them, facing the road."""
    ox, oy = outward
    house_along = float(rng.uniform(34, 62))
    house_across = float(rng.uniform(36, 58))
    cx, cy = centre[0] + ox * house_across / 2, centre[1] + oy * house_across / 2
    # Houses stand with their long side or their gable to the road.
    house_ang = ang + (math.pi / 2 if rng.random() < 0.35 else 0.0) + rng.normal(0, 0.05)
    parts: list[_Part] = [(_rect(cx, cy, house_along, house_across, house_ang), True, _ROOF_HOUSE)]
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
    return parts, _rect(ycx, ycy, yard_along, yard_across, ang)


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
    parts, yard = _farm_plan(centre, ang, outward, rng)
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
    _paint_shadows(
        i_win, m_win, parts, footprint, off, (-sun[0] * shadow_len, -sun[1] * shadow_len)
    )
    _paint_roofs(i_win, m_win, parts, fill, off, sun, rng)
    return True


def _paint_shadows(
    i_win: FloatImage,
    m_win: ByteImage,
    parts: list[_Part],
    footprint: BoolImage,
    off: npt.NDArray[np.int64],
    cast: tuple[float, float],
) -> None:
    """Each building's shadow, cast by ``cast`` pixels, darkens what is not a building."""
    for poly, _, _ in parts:
        hull = cv2.convexHull(
            np.round(np.concatenate([poly, poly + np.array(cast)]) - off).astype(np.int32)
        )
        layer = np.zeros(footprint.shape, np.uint8)
        cv2.fillPoly(layer, [hull], 1)
        shade = layer.view(bool) & ~footprint & (m_win != BUILDING)
        i_win[shade] *= np.float32(0.55)


def _paint_roofs(
    i_win: FloatImage,
    m_win: ByteImage,
    parts: list[_Part],
    fill: Callable[[Points], BoolImage],
    off: npt.NDArray[np.int64],
    sun: tuple[float, float],
    rng: np.random.Generator,
) -> None:
    """Roofs painted through the same rasterised footprints that go into the mask, so every
    roof pixel is a building pixel and vice versa."""
    h, w = m_win.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
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
