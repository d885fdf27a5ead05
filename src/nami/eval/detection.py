"""Find GenEval-Shapes objects in an RGB image: palette colour per pixel, connected components, shape by fit.

Colour. Every drawn pixel is a blend alpha * colour + (1 - alpha) * white (an anti-aliased or blurred edge is
a partial blend), so each pixel is projected onto the six white->colour segments in RGB: the segment with the
smallest residual names its colour, the projection its coverage alpha. A pixel is solid when alpha >=
ALPHA_MIN and the residual <= RESIDUAL_MAX. Pale edge pixels are not solid but keep their coverage for the
shape fit; muddy pixels (greys, dark tones, a mix of two palette colours) lie far from every segment and
belong to no object.

Objects are the 8-connected solid components of one colour covering at least MIN_AREA of the shorter side
squared. Each takes the coverage of the pixels within RING of it that lie nearer to it than to any other
component. Boxes are in fractions of the shorter side, as the specs' are, at any aspect ratio.

Shape. Moments place an ideal circle, square and apex-up triangle (each possibly blurred, as generated images
are soft): the centroid fixes the position, the variances the size (square side sqrt(12) sd, circle diameter
4 sd, triangle width sqrt(24) sd_x and height sqrt(18) sd_y). The shape whose ideal coverage differs least
from the object's wins; the object is `unknown` when even that differs by more than MAX_MISMATCH of its mass,
when its box is elongated, or when its mass is vertically lopsided the wrong way (the triangle's sits low,
circles and squares are symmetric). The winner's box is the reported bbox: sub-pixel accurate at 32 px.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .shapes import BACKGROUND, COLORS, PALETTE, SHAPES

ALPHA_MIN = 0.5  # an object pixel is at least half covered by its colour
RESIDUAL_MAX = 60.0  # RGB distance to the nearest white->colour segment (>= 68 apart above alpha 0.5)
MIN_AREA = 0.01  # of the shorter side squared (the image area when square); the smallest drawn object (a triangle
# of side 0.25 of the shorter side) covers 0.031 of it, at any aspect ratio
RING = 2  # pixels around a component whose partial coverage still belongs to it
# Shape: the ideal circle / square / triangle (optionally blurred by BLURS x the object's size, as generated
# images are soft) placed by the component's centroid and spread, that differs least from its coverage.
BLURS = (0.0, 0.06, 0.12)
CRISP = 0.05  # a mismatch this small ends the search
MAX_MISMATCH = 0.5  # sum |coverage - ideal| / sum coverage: ~0 on renders, ~0.3 under RGB noise of sd 20-30
MIN_SKEW = 0.3  # |vertical skewness| that separates apex-up triangles (-0.57) from symmetric shapes (0)
MAX_ASPECT = 1.5  # every drawn shape sits in a square box
SUBSAMPLE = 4  # sample points per pixel side when drawing the ideal shapes

_WHITE = np.asarray(BACKGROUND, np.float32)
_DIRS = np.asarray([PALETTE[c] for c in COLORS], np.float32) - _WHITE  # (colours, 3): white -> colour
_EIGHT = np.ones((3, 3), bool)


def to_rgb_uint8(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 from PIL, an (H, W, 3) uint8 array, or a (3, H, W) uint8 or [-1, 1] float tensor."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        if image.dtype != torch.uint8:  # model output convention: [-1, 1]
            image = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return image.permute(1, 2, 0).numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    return image


def palette_projection(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel and palette colour: coverage alpha in [0, 1] and the RGB residual, each (H, W, colours)."""
    p = rgb.astype(np.float32) - _WHITE
    alpha = np.clip(p @ _DIRS.T / (_DIRS * _DIRS).sum(1), 0.0, 1.0)
    residual = np.linalg.norm(p[..., None, :] - alpha[..., None] * _DIRS, axis=-1)
    return alpha, residual


def _moments(weights: np.ndarray, origin: tuple[int, int]) -> tuple[float, float, float, float, float]:
    """Centroid (pixels), variances along x and y, and the skewness along y of the alpha weights of a crop."""
    ys, xs = np.indices(weights.shape, dtype=np.float64)
    xs, ys = xs + origin[1] + 0.5, ys + origin[0] + 0.5
    total = weights.sum()
    cx, cy = (weights * xs).sum() / total, (weights * ys).sum() / total
    vx, vy = (weights * (xs - cx) ** 2).sum() / total, (weights * (ys - cy) ** 2).sum() / total
    skew = (weights * (ys - cy) ** 3).sum() / total / max(vy, 1e-6) ** 1.5
    return cx, cy, vx, vy, skew


def _shape_box(shape: str, cx: float, cy: float, sx: float, sy: float) -> tuple[float, float, float, float]:
    """The box (pixels) of the ideal `shape` with this centroid and these standard deviations."""
    # Half-width over standard deviation: uniform (square) sqrt(3), disc 2; a triangle's width is uniform in
    # its height, so sqrt(6) across, and its height is sqrt(18) sy with the centroid a third above the base.
    if shape == "triangle":
        half, height = np.sqrt(6.0) * sx, np.sqrt(18.0) * sy
        return cx - half, cy - 2 * height / 3, cx + half, cy + height / 3
    k = 2.0 if shape == "circle" else np.sqrt(3.0)
    return cx - k * sx, cy - k * sy, cx + k * sx, cy + k * sy


def _coverage(
    shape: str, box: tuple[float, ...], origin: tuple[int, int], size: tuple[int, ...]
) -> np.ndarray:
    """Coverage of the ideal `shape` in `box` (pixels) per pixel of a crop, from SUBSAMPLE^2 points each."""
    sub = (np.arange(SUBSAMPLE) + 0.5) / SUBSAMPLE
    ys = (np.arange(origin[0], origin[0] + size[0])[:, None] + sub).reshape(-1, 1)
    xs = (np.arange(origin[1], origin[1] + size[1])[:, None] + sub).reshape(1, -1)
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "square":
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    elif shape == "circle":
        inside = ((xs - cx) / (x1 - cx)) ** 2 + ((ys - cy) / (y1 - cy)) ** 2 <= 1
    else:  # apex up: the half-width grows linearly from the apex on the top edge to the base
        t = (ys - y0) / (y1 - y0)
        inside = (t >= 0) & (t <= 1) & (np.abs(xs - cx) <= t * (x1 - x0) / 2)
    return inside.reshape(size[0], SUBSAMPLE, size[1], SUBSAMPLE).mean(axis=(1, 3))


def classify(weights: np.ndarray, origin: tuple[int, int]) -> tuple[str, tuple[float, ...], float]:
    """(shape, box in pixels, mismatch) for the alpha weights of one component on a crop at `origin`."""
    cx, cy, vx, vy, skew = _moments(weights, origin)
    size = np.sqrt(weights.sum())
    best = ("unknown", (0.0, 0.0, 0.0, 0.0), np.inf)
    for blur in BLURS:
        sigma = blur * size
        # Blurring adds sigma^2 to both variances; the shape's own box comes from what is left.
        sx, sy = np.sqrt(max(vx - sigma**2, 0.25)), np.sqrt(max(vy - sigma**2, 0.25))
        for shape in SHAPES:
            box = _shape_box(shape, cx, cy, sx, sy)
            template = _coverage(shape, box, origin, weights.shape)
            if sigma:
                template = ndimage.gaussian_filter(template, sigma, mode="constant")
            mismatch = float(np.abs(weights - template).sum() / weights.sum())
            if mismatch < best[2]:
                best = (shape, box, mismatch)
        if best[2] < CRISP:  # a crisp object needs no blurred candidates (the other shapes are >= 0.08 off)
            break
    shape, box, mismatch = best
    w, h = box[2] - box[0], box[3] - box[1]
    # Apex up puts the mass low (skewness -0.57 for a sharp triangle); circles and squares are symmetric.
    lopsided = skew > -MIN_SKEW if shape == "triangle" else abs(skew) > MIN_SKEW
    if mismatch > MAX_MISMATCH or max(w, h) > MAX_ASPECT * min(w, h) or lopsided:
        shape = "unknown"
    return shape, box, mismatch


def detect(image: Any) -> list[dict[str, Any]]:
    """Objects as dicts {shape, color, bbox, area}: bbox in fractions of the shorter side (the specs' unit, so
    relations are judged in true proportions on a non-square image too), area a fraction of the image."""
    rgb = to_rgb_uint8(image)
    height, width = rgb.shape[:2]
    alpha, residual = palette_projection(rgb)
    best = residual.argmin(-1)
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    best_residual = np.take_along_axis(residual, best[..., None], -1)[..., 0]
    solid = (best_alpha >= ALPHA_MIN) & (best_residual <= RESIDUAL_MAX)
    if not solid.any():
        return []
    # One id per component over all colours; every pixel belongs to the component of its nearest solid pixel,
    # so the partly covered edge of one object never counts towards a neighbour.
    ids = np.zeros((height, width), np.int64)
    components = []  # (id, colour index, box)
    for c in range(len(COLORS)):
        labels, n = ndimage.label(solid & (best == c), structure=_EIGHT)
        offset = len(components)
        ids[labels > 0] = labels[labels > 0] + offset
        components += [(offset + i, c, box) for i, box in enumerate(ndimage.find_objects(labels), start=1)]
    owner = ids[tuple(ndimage.distance_transform_edt(ids == 0, return_indices=True)[1])]
    side = min(height, width)
    found = []
    for k, c, box in components:
        if (ids[box] == k).sum() < MIN_AREA * side * side:
            continue
        # The component grown by RING pixels holds its partly covered (and blurred) edge; the crop leaves two
        # more pixels for the ideal shape it is compared with.
        crop = tuple(slice(max(s.start - RING - 2, 0), s.stop + RING + 2) for s in box)
        grown = ndimage.binary_dilation(ids[crop] == k, structure=_EIGHT, iterations=RING)
        region = grown & (owner[crop] == k)
        coverage = np.where(residual[crop + (c,)] <= RESIDUAL_MAX, alpha[crop + (c,)], 0.0)
        weights = np.where(region, coverage, 0.0)
        shape, bbox, _ = classify(weights, (crop[0].start, crop[1].start))
        found.append({
            "shape": shape,
            "color": COLORS[c],
            "bbox": [round(float(v) / side, 4) for v in bbox],
            "area": round(float(weights.sum()) / (height * width), 4),
        })
    return found
