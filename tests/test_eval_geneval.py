"""GenEval-Shapes evaluator: ground-truth renders score (almost) perfectly, and each kind of wrong image fails
for its own reason."""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from nami.eval import detect, evaluate, prompt_set, score_detections, score_image
from nami.eval.shapes import BACKGROUND, CATEGORIES, COLORS, PALETTE, make_spec, render

SPECS = prompt_set(50)  # the `nami eval` default set at 32 px


def _first(category: str, specs=SPECS, where=lambda s: True) -> dict:
    return next(s for s in specs if s["category"] == category and where(s))


def _redraw(spec: dict, objects: list[dict]) -> Image.Image:
    """Render other objects in the spec's frame (the spec itself, what the prompt asked, is unchanged)."""
    return render({**copy.deepcopy(spec), "objects": objects})


def _accuracy(images, specs) -> float:
    return evaluate(images, specs)["overall"]


def test_prompt_set_is_fixed_balanced_and_apart_from_training():
    specs = prompt_set(7)
    assert specs == prompt_set(7) and specs != prompt_set(7, seed=1001)
    assert Counter(s["category"] for s in specs) == dict.fromkeys(CATEGORIES, 7)
    training = {make_spec(i)["caption"] + str(make_spec(i)["objects"]) for i in range(len(specs))}
    assert not training & {s["caption"] + str(s["objects"]) for s in specs}
    assert {s["resolution"] for s in prompt_set(2, resolution=64)} == {64}


@pytest.mark.parametrize("resolution", [32, 64])
def test_ground_truth_renders_score_at_least_099_in_every_category(resolution):
    specs = SPECS if resolution == 32 else prompt_set(50, resolution=resolution)
    scores = evaluate([render(s) for s in specs], specs)
    failures = [(r["caption"], r["reason"]) for r in scores["results"] if not r["correct"]]
    for category in CATEGORIES:
        assert scores["counts"][category]["total"] == 50
        assert scores[category] >= 0.99, (category, failures)
    assert scores["overall"] == pytest.approx(np.mean([scores[c] for c in CATEGORIES]))


@pytest.mark.parametrize("size", [(32, 64), (64, 32), (48, 48)])
def test_a_prompt_set_at_a_bucket_asks_the_same_prompts_rendered_at_that_size(size):
    """eval.size: the scenes are laid out for the bucket's aspect ratio and rendered at exactly its size (FID's
    reference images), the prompts are the square set's, and the ground truth still scores."""
    square, specs = prompt_set(20, resolution=48), prompt_set(20, resolution=48, size=size)
    asked = [[s["caption"], s["include"], s["exclude"]] for s in square]
    assert [[s["caption"], s["include"], s["exclude"]] for s in specs] == asked
    assert {render(s).size for s in specs} == {(size[1], size[0])}  # PIL: (width, height)
    if size[0] != size[1]:
        assert [s["objects"] for s in specs] != [s["objects"] for s in square]  # laid out for the wider frame
    scores = evaluate([render(s) for s in specs], specs)
    assert min(scores[c] for c in CATEGORIES) >= 0.95, [r["reason"] for r in scores["results"] if not r["correct"]]


@pytest.mark.parametrize("resolution", [32, 64])
def test_detections_are_the_drawn_objects_with_subpixel_boxes(resolution):
    for spec in prompt_set(10, seed=7, resolution=resolution):
        found = detect(render(spec))
        assert Counter((d["shape"], d["color"]) for d in found) == Counter(
            (o["shape"], o["color"]) for o in spec["objects"]
        )
        for obj in spec["objects"]:
            box = min(found, key=lambda d: np.abs(np.subtract(d["bbox"], obj["bbox"])).sum())["bbox"]
            assert np.abs(np.subtract(box, obj["bbox"])).max() * resolution < 0.6  # pixels


def test_image_formats_agree():
    spec = _first("color_attr")
    pil = render(spec)
    array = np.array(pil)
    uint8 = torch.from_numpy(array).permute(2, 0, 1)
    signed = uint8.float() / 127.5 - 1  # the model's [-1, 1] convention
    expected = detect(pil)
    for image in (array, uint8, signed):
        assert detect(image) == expected
    batch = torch.stack([signed, signed])  # a batched tensor iterates image by image
    assert evaluate(batch, [spec, spec])["color_attr"] == 1.0


def test_wrong_colour_fails_on_the_colour():
    spec = _first("colors")
    obj = spec["objects"][0]
    other = next(c for c in COLORS if c != obj["color"])
    result = score_image(_redraw(spec, [{**obj, "color": other}]), spec)
    assert not result["correct"]
    assert f"expected >= 1 {obj['color']} {obj['shape']}, found 0" in result["reason"]
    assert f"{other} {obj['shape']}" in result["reason"]  # what was there instead


def test_swapped_colours_fail_color_attribution():
    spec = _first("color_attr")
    a, b = spec["objects"]
    swapped = [{**a, "color": b["color"]}, {**b, "color": a["color"]}]
    result = score_image(_redraw(spec, swapped), spec)
    assert not result["correct"]
    assert f"{a['color']} {a['shape']}, found 0" in result["reason"]
    assert f"{b['color']} {b['shape']}, found 0" in result["reason"]


def test_wrong_count_fails_both_ways():
    spec = _first("counting", where=lambda s: len(s["objects"]) == 3)
    shape = spec["objects"][0]["shape"]
    fewer = score_image(_redraw(spec, spec["objects"][:2]), spec)
    assert not fewer["correct"] and f"expected >= 3 {shape}, found 2" in fewer["reason"]
    # An image of four of the same shape (another spec's layout) asked for as three.
    four = _first("counting", prompt_set(60), lambda s: [o["shape"] for o in s["objects"]] == [shape] * 4)
    more = score_image(render(four), spec)
    assert not more["correct"] and f"expected fewer than 4 {shape}, found 4" in more["reason"]


def test_swapped_relation_fails_on_the_relation():
    for spec in [s for s in SPECS if s["category"] == "position"][:8]:
        relation = spec["relation"]["type"]
        horizontal = relation in ("left of", "right of")

        def mirror(box):
            x0, y0, x1, y1 = box
            return [1 - x1, y0, 1 - x0, y1] if horizontal else [x0, 1 - y1, x1, 1 - y0]

        mirrored = [{**o, "bbox": mirror(o["bbox"])} for o in spec["objects"]]
        assert score_image(render(spec), spec)["correct"]
        result = score_image(_redraw(spec, mirrored), spec)
        assert not result["correct"]
        subject, target = spec["include"][1], spec["include"][0]
        expected = f"expected {subject['shape']} {subject['position'][0]} {target['shape']}"
        assert result["reason"].startswith(expected)


def test_missing_object_fails_naming_it():
    spec = _first("two_object")
    kept, dropped = spec["objects"]
    result = score_image(_redraw(spec, [kept]), spec)
    assert not result["correct"]
    assert result["reason"].startswith(f"expected >= 1 {dropped['shape']}, found 0")


def test_blank_image_fails_every_category():
    blank = Image.new("RGB", (32, 32), BACKGROUND)
    assert detect(blank) == []
    specs = [_first(c) for c in CATEGORIES]
    scores = evaluate([blank] * len(specs), specs)
    assert scores["overall"] == 0.0
    assert all("found 0 (detected: nothing)" in r["reason"] for r in scores["results"])


def _drawn(draw, colour=PALETTE["red"]) -> Image.Image:
    """A 32 px image drawn at 4x by `draw(ImageDraw, colour)` and box-filtered down, like the renders."""
    image = Image.new("RGB", (128, 128), BACKGROUND)
    draw(ImageDraw.Draw(image), colour)
    return image.resize((32, 32), Image.Resampling.BOX)


def test_muddy_and_foreign_colours_are_no_object():
    disc = lambda d, c: d.ellipse([32, 32, 96, 96], fill=c)  # noqa: E731
    assert [o["shape"] for o in detect(_drawn(disc))] == ["circle"]
    for colour in ((128, 128, 128), (40, 40, 40), (230, 120, 25)):  # grey, near black, orange (red + yellow)
        assert detect(_drawn(disc, colour)) == []


def test_shapes_outside_the_vocabulary_are_unknown_and_match_nothing():
    drawings = {
        "inverted triangle": lambda d, c: d.polygon([(38, 38), (90, 38), (64, 90)], fill=c),
        "L": lambda d, c: (d.rectangle([38, 38, 54, 90], fill=c), d.rectangle([38, 74, 90, 90], fill=c)),
        "bar": lambda d, c: d.rectangle([38, 58, 90, 74], fill=c),
        "cross": lambda d, c: (d.rectangle([58, 38, 70, 90], fill=c), d.rectangle([38, 58, 90, 70], fill=c)),
    }
    for name, draw in drawings.items():
        assert [d["shape"] for d in detect(_drawn(draw))] == ["unknown"], name
    # An unknown object satisfies no include entry and counts towards no exclude entry.
    unknown = [{"shape": "unknown", "color": "red", "bbox": [0.3, 0.3, 0.7, 0.7], "area": 0.1}]
    assert not score_detections(unknown, _first("single_object"))[0]
    three = _first("counting", where=lambda s: len(s["objects"]) == 3)
    dets = [{**o, "area": 0.05} for o in three["objects"]] + unknown
    assert score_detections(dets, three) == (True, "")


def test_blur_and_noise_mild_pass_heavy_fail():
    """Documented behaviour: colour survives blur (white blends stay on the palette segments) and mild blur or
    grain keeps every score; heavy blur rounds shapes into misread or unknown blobs, heavy grain leaves only
    unknown speckled blobs, and those images fail on the shape."""
    specs = prompt_set(5, seed=3)
    clean = [render(s) for s in specs]
    rng = np.random.default_rng(0)

    def noisy(image, sd):
        return np.clip(np.asarray(image) + rng.normal(0, sd, (32, 32, 3)), 0, 255).astype(np.uint8)

    assert _accuracy([im.filter(ImageFilter.GaussianBlur(1.0)) for im in clean], specs) == 1.0
    assert _accuracy([noisy(im, 15) for im in clean], specs) == 1.0

    blurred = evaluate([im.filter(ImageFilter.GaussianBlur(3.0)) for im in clean], specs)
    assert blurred["overall"] <= 0.3
    wanted = {o["color"] for s in specs for o in s["objects"]}
    assert {d["color"] for r in blurred["results"] for d in r["detections"]} <= wanted
    assert all(", found " in r["reason"] for r in blurred["results"] if not r["correct"])

    grainy = evaluate([noisy(im, 80) for im in clean], specs)
    assert grainy["overall"] == 0.0
    assert {d["shape"] for r in grainy["results"] for d in r["detections"]} <= {"unknown"}


def test_position_uses_the_largest_candidates_and_extra_objects_are_allowed():
    spec = _first("position", where=lambda s: s["relation"]["type"] == "left of")
    dets = [{**o, "area": 0.1} for o in spec["objects"]]
    assert score_detections(dets, spec) == (True, "")
    # A small extra copy of the subject on the wrong side is ignored; a large one decides.
    a, b = spec["objects"]
    stray = {**a, "bbox": [min(b["bbox"][2] + 0.01, 0.98), b["bbox"][1], 0.99, b["bbox"][3]]}
    assert score_detections(dets + [{**stray, "area": 0.01}], spec)[0]
    assert not score_detections(dets + [{**stray, "area": 0.5}], spec)[0]
