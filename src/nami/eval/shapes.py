"""GenEval-Shapes: the vocabulary (shapes, palette, categories), the per-image spec, and its renderer.

Shared by the shard writer (`data_modules.synth`) and the evaluator. The evaluator detects objects by palette colour and connected components, so it must read the constants
from here. Every object is one flat palette colour on a plain white background, objects never touch (a gap
of at least GAP of the side between bounding boxes), and sizes stay recognisable at 32 px.

Spec (the `.json` of a sample; coordinates are fractions of the image's shorter side, x to the right, y down, so
a square image spans [0, 1] on both axes and a 2:1 one [0, 2] x [0, 1]):

    {"version": 1, "category": "position", "caption": "a photo of a circle left of a square",
     "resolution": 32, "background": [255, 255, 255],
     "objects": [{"shape": "circle", "color": "red", "bbox": [x0, y0, x1, y1]}, ...],   # what is drawn
     "relation": {"type": "left of", "subject": 0, "object": 1} | null,       # objects[0] left of objects[1]
     "include": [{"shape": "circle", "count": 1, "color": null, "position": null},
                 {"shape": "square", "count": 1, "color": null, "position": ["right of", 0]}],
     "exclude": [{"shape": "circle", "count": 3}]}                                       # counting only

`include` / `exclude` state what the caption asks, in GenEval's form: `color` null means any colour,
`position` [relation, j] means "this object is <relation> include[j]", exclude means "fewer than count".

A scene at another aspect ratio (`make_spec(..., aspect=2.0)`, width / height) also holds "width" and "height" in
pixels (about resolution^2 of them); object sizes stay fractions of the shorter side, and positions spread over
the whole image. A square spec has neither key, exactly as before.
"""

from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw

SPEC_VERSION = 1
SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
# Six flat colours, pairwise at least ~140 apart in RGB and far from the white background.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "magenta": (200, 40, 200),
    "cyan": (30, 200, 210),
}
COLORS = tuple(PALETTE)
BACKGROUND = (255, 255, 255)
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
SIZE_ONE = (0.50, 0.80)  # object side, fraction of the image side, alone (16-25 px at 32 px)
SIZE_FEW = (0.30, 0.45)  # with two objects (room for a relation between them)
SIZE_MANY = (0.25, 0.31)  # with three or four objects (counting): still >= 8 px at 32 px
GAP = 0.04  # minimum gap between bounding boxes
MARGIN = 0.03  # minimum gap to the image border


def relation_holds(a: list[float], b: list[float], relation: str) -> bool:
    """Box a is unambiguously `relation` box b: disjoint along the relation's axis, and that axis dominant."""
    acx, acy, bcx, bcy = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2, (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    dx, dy = bcx - acx, bcy - acy
    if relation == "left of":
        return a[2] <= b[0] and dx > abs(dy)
    if relation == "right of":
        return b[2] <= a[0] and -dx > abs(dy)
    if relation == "above":
        return a[3] <= b[1] and dy > abs(dx)
    if relation == "below":
        return b[3] <= a[1] and -dy > abs(dx)
    raise ValueError(f"unknown relation {relation!r}")


def _apart(a: list[float], b: list[float]) -> bool:
    return a[2] + GAP <= b[0] or b[2] + GAP <= a[0] or a[3] + GAP <= b[1] or b[3] + GAP <= a[1]


def _layout(rng: random.Random, n: int, size: tuple[float, float], relation: str | None,
            extent: tuple[float, float] = (1.0, 1.0)) -> list[list[float]]:  # fmt: skip
    """n non-touching square boxes inside the margins of an image spanning `extent` (width, height in shorter
    sides), and satisfying `relation` between box 0 and 1."""
    while True:  # restart a layout that gets stuck; each attempt is cheap and the rng keeps it deterministic
        boxes: list[list[float]] = []
        for _ in range(200):
            side = rng.uniform(*size)
            x0 = rng.uniform(MARGIN, extent[0] - MARGIN - side)
            y0 = rng.uniform(MARGIN, extent[1] - MARGIN - side)
            box = [round(x0, 4), round(y0, 4), round(x0 + side, 4), round(y0 + side, 4)]
            if all(_apart(box, other) for other in boxes):
                boxes.append(box)
                if len(boxes) == n:
                    break
        if len(boxes) == n and (relation is None or relation_holds(boxes[0], boxes[1], relation)):
            return boxes


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def image_size(resolution: int, aspect: float) -> tuple[int, int]:
    """(width, height) in pixels of an image of about resolution^2 pixels at aspect ratio width / height."""
    return round(resolution * aspect**0.5), round(resolution / aspect**0.5)


def spec_size(spec: dict[str, Any], resolution: int | None = None) -> tuple[int, int]:
    """(width, height) in pixels a spec renders at; `resolution` rescales it (the square's side)."""
    side = resolution or spec["resolution"]
    if "width" not in spec:
        return side, side
    scale = side / spec["resolution"]
    return round(spec["width"] * scale), round(spec["height"] * scale)


def make_spec(index: int, seed: int = 0, resolution: int = 32, aspect: float = 1.0) -> dict[str, Any]:
    """The spec of sample `index`: category round-robin, everything else drawn from (seed, index). `aspect`
    (width / height) gives a scene of about resolution^2 pixels at that aspect ratio (the caption and objects
    are drawn as for the square; their positions spread over the wider image)."""
    rng = random.Random(f"geneval-shapes:{seed}:{index}")
    width, height = image_size(resolution, aspect)
    extent = (width / min(width, height), height / min(width, height))
    category = CATEGORIES[index % len(CATEGORIES)]
    relation = None
    if category == "counting":
        count = rng.choice(tuple(NUMBER_WORDS))
        shape = rng.choice(SHAPES)
        shapes, colors = [shape] * count, [rng.choice(COLORS) for _ in range(count)]
        caption = f"a photo of {NUMBER_WORDS[count]} {PLURALS[shape]}"
        include = [{"shape": shape, "count": count, "color": None, "position": None}]
        exclude = [{"shape": shape, "count": count + 1}]
    else:
        two = category in ("two_object", "position", "color_attr")
        shapes = rng.sample(SHAPES, 2) if two else [rng.choice(SHAPES)]
        named = category in ("colors", "color_attr")
        colors = rng.sample(COLORS, 2) if category == "color_attr" else [rng.choice(COLORS) for _ in shapes]
        include = [
            {"shape": s, "count": 1, "color": c if named else None, "position": None}
            for s, c in zip(shapes, colors)
        ]
        exclude = []
        words = [f"{c} {s}" if named else s for s, c in zip(shapes, colors)]
        if category == "position":
            relation = rng.choice(RELATIONS)
            include[1]["position"] = [INVERSE[relation], 0]
            caption = f"a photo of {_article(words[0])} {words[0]} {relation} {_article(words[1])} {words[1]}"
        else:
            caption = "a photo of " + " and ".join(f"{_article(w)} {w}" for w in words)
    boxes = _layout(rng, len(shapes), (SIZE_ONE, SIZE_FEW, SIZE_MANY, SIZE_MANY)[len(shapes) - 1], relation,
                    extent)  # fmt: skip
    size = {} if width == height else {"width": width, "height": height}
    return {
        "version": SPEC_VERSION,
        "category": category,
        "caption": caption,
        "resolution": resolution,
        **size,
        "background": list(BACKGROUND),
        "objects": [{"shape": s, "color": c, "bbox": b} for s, c, b in zip(shapes, colors, boxes)],
        "relation": {"type": relation, "subject": 0, "object": 1} if relation else None,
        "include": include,
        "exclude": exclude,
    }


def render(spec: dict[str, Any], resolution: int | None = None, supersample: int = 4) -> Image.Image:
    """Draw the spec at `supersample` x the size, then box-filter down: flat interiors, anti-aliased edges."""
    width, height = spec_size(spec, resolution)
    side = min(width, height) * supersample  # coordinates are fractions of the shorter side
    img = Image.new("RGB", (width * supersample, height * supersample), tuple(spec.get("background", BACKGROUND)))
    draw = ImageDraw.Draw(img)
    for obj in spec["objects"]:
        x0, y0, x1, y1 = (v * side for v in obj["bbox"])
        fill = PALETTE[obj["color"]]
        if obj["shape"] == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif obj["shape"] == "triangle":  # isosceles, apex up, base on the box's bottom edge
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj['shape']!r}")
    return img.resize((width, height), Image.Resampling.BOX) if supersample > 1 else img
