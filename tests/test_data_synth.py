"""GenEval-Shapes specs are consistent, and the rendered objects are findable by palette colour at 32 px."""

from __future__ import annotations

from collections import Counter, deque

import numpy as np
import pytest

from nami.eval.shapes import (
    CATEGORIES,
    COLORS,
    GAP,
    MARGIN,
    NUMBER_WORDS,
    PALETTE,
    PLURALS,
    SHAPES,
    make_spec,
    relation_holds,
    render,
)

N = 240


def _components(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected components of a boolean mask."""
    seen = np.zeros_like(mask)
    sizes = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], queue, size = True, deque([start]), 0
        while queue:
            r, c = queue.popleft()
            size += 1
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
        sizes.append(size)
    return sizes


def test_specs_are_deterministic_and_cover_every_category():
    specs = [make_spec(i, seed=3) for i in range(N)]
    assert specs == [make_spec(i, seed=3) for i in range(N)]
    assert specs != [make_spec(i, seed=4) for i in range(N)]
    assert Counter(s["category"] for s in specs) == {c: N // len(CATEGORIES) for c in CATEGORIES}


def test_specs_are_consistent_with_their_captions():
    for i in range(N):
        s = make_spec(i)
        objects, boxes = s["objects"], [o["bbox"] for o in s["objects"]]
        assert all(o["shape"] in SHAPES and o["color"] in COLORS for o in objects)
        for a, box in enumerate(boxes):
            assert MARGIN - 1e-4 <= min(box) and max(box) <= 1 - MARGIN + 1e-4
            assert abs((box[2] - box[0]) - (box[3] - box[1])) < 1e-3 and box[2] - box[0] >= 0.25 - 1e-4
            for other in boxes[a + 1 :]:  # no overlap, at least GAP apart along some axis
                assert (
                    max(other[0] - box[2], box[0] - other[2], other[1] - box[3], box[1] - other[3])
                    >= GAP - 1e-3
                )
        cat, cap = s["category"], s["caption"]
        for item in s["include"]:
            assert item["shape"] in cap and (item["color"] is None or item["color"] in cap)
        if cat == "counting":
            n = len(objects)
            assert n in NUMBER_WORDS and cap == f"a photo of {NUMBER_WORDS[n]} {PLURALS[objects[0]['shape']]}"
            assert s["exclude"] == [{"shape": objects[0]["shape"], "count": n + 1}]
        elif cat == "position":
            rel = s["relation"]
            assert relation_holds(boxes[rel["subject"]], boxes[rel["object"]], rel["type"])
            assert f" {rel['type']} " in cap
        elif cat == "color_attr":
            assert objects[0]["color"] != objects[1]["color"] and objects[0]["shape"] != objects[1]["shape"]
        assert len(objects) == {"single_object": 1, "colors": 1}.get(cat, len(objects))


@pytest.mark.parametrize("resolution", [32, 64])
def test_rendered_objects_are_palette_blobs(resolution):
    """Each object is one connected blob of exactly its palette colour, so an evaluator can count them."""
    for i in range(0, N, 2):
        spec = make_spec(i, resolution=resolution)
        img = np.asarray(render(spec), dtype=np.int32)
        assert img.shape == (resolution, resolution, 3)
        for name, rgb in PALETTE.items():
            blobs = _components(np.abs(img - np.array(rgb)).max(axis=-1) <= 40)
            wanted = sum(o["color"] == name for o in spec["objects"])
            assert len(blobs) == wanted, (i, name, spec["caption"])
            assert all(size >= (resolution / 32) ** 2 * 20 for size in blobs), (i, name, blobs)
        for obj in spec["objects"]:  # the centroid holds the object's colour exactly
            x0, y0, x1, y1 = obj["bbox"]
            down = 2 / 3 if obj["shape"] == "triangle" else 1 / 2
            cx, cy = int((x0 + x1) / 2 * resolution), int((y0 + (y1 - y0) * down) * resolution)
            assert tuple(img[cy, cx]) == PALETTE[obj["color"]], (i, obj)
