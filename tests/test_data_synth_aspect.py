"""GenEval-Shapes at several aspect ratios: specs in shorter-side units, renders of about resolution^2 pixels, the
evaluator's detector scoring them, and `nami data synth --aspect-ratios`."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter

import pytest
from PIL import Image

from nami.cli import main
from nami.eval.detection import detect
from nami.eval.geneval import score_image
from nami.eval.shapes import CATEGORIES, GAP, MARGIN, image_size, make_spec, relation_holds, render

N = 120


@pytest.mark.parametrize("aspect", [0.5, 2.0, 0.25])
def test_specs_spread_over_the_image_with_sizes_from_the_shorter_side(aspect):
    width, height = image_size(32, aspect)
    extent = (width / min(width, height), height / min(width, height))
    reach = [0.0, 0.0]
    for i in range(N):
        spec = make_spec(i, aspect=aspect)
        assert (spec["width"], spec["height"]) == (width, height) and spec["resolution"] == 32
        assert make_spec(i)["caption"] == spec["caption"]  # the same scene asked for, laid out wider
        boxes = [o["bbox"] for o in spec["objects"]]
        for a, box in enumerate(boxes):
            assert MARGIN - 1e-4 <= box[0] and box[2] <= extent[0] - MARGIN + 1e-4
            assert MARGIN - 1e-4 <= box[1] and box[3] <= extent[1] - MARGIN + 1e-4
            assert abs((box[2] - box[0]) - (box[3] - box[1])) < 1e-3 and box[2] - box[0] >= 0.25 - 1e-4
            reach = [max(reach[0], box[2]), max(reach[1], box[3])]
            for other in boxes[a + 1 :]:
                assert max(other[0] - box[2], box[0] - other[2], other[1] - box[3], box[1] - other[3]) >= GAP - 1e-3
        if spec["relation"]:
            rel = spec["relation"]
            assert relation_holds(boxes[rel["subject"]], boxes[rel["object"]], rel["type"])
    long_axis = 0 if aspect > 1 else 1
    assert reach[long_axis] > 0.8 * extent[long_axis]  # objects reach the far end of the long side


def test_a_square_spec_is_unchanged():
    assert make_spec(7, seed=2, aspect=1.0) == make_spec(7, seed=2)
    assert "width" not in make_spec(7) and image_size(32, 1.0) == (32, 32)


@pytest.mark.parametrize("resolution, aspect", [(32, 0.5), (32, 2.0), (32, 1.0), (32, 0.25), (64, 4.0)])
def test_the_detector_scores_every_scene_of_an_aspect_ratio(resolution, aspect):
    correct, seen = Counter(), Counter()
    for i in range(N):
        spec = make_spec(i, resolution=resolution, aspect=aspect)
        image = render(spec)
        assert image.size == image_size(resolution, aspect)
        result = score_image(image, spec)
        seen[spec["category"]] += 1
        correct[spec["category"]] += result["correct"]
    assert correct == seen, {c: f"{correct[c]}/{seen[c]}" for c in CATEGORIES}


def test_detected_boxes_are_in_shorter_side_units():
    for i in (0, 4, 5):  # a lone object, a position scene, two coloured objects
        spec = make_spec(i, resolution=64, aspect=2.0)
        found = sorted(detect(render(spec)), key=lambda d: d["bbox"][0])
        drawn = sorted(spec["objects"], key=lambda o: o["bbox"][0])
        assert [(d["shape"], d["color"]) for d in found] == [(o["shape"], o["color"]) for o in drawn]
        for d, o in zip(found, drawn):
            assert max(abs(a - b) for a, b in zip(d["bbox"], o["bbox"])) < 0.05, (d["bbox"], o["bbox"])


def _members(directory):
    out = {}
    for path in sorted(directory.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                out[member.name] = tar.extractfile(member).read()
    return out


def test_nami_data_synth_cycles_the_aspect_ratios(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "mixed"), "--num", "36", "--shards", "2",
                 "--aspect-ratios", "1:2,1:1,2:1", "--json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert report["aspect_ratios"] == [0.5, 1.0, 2.0] and report["samples"] == 36
    members = _members(tmp_path / "mixed")
    sizes = Counter()
    for i in range(36):
        meta = json.loads(members[f"{i:09d}.json"])
        image = Image.open(io.BytesIO(members[f"{i:09d}.png"]))
        want = image_size(32, [0.5, 1.0, 2.0][(i // 6) % 3])  # every category meets every ratio
        assert image.size == want == (meta["width"], meta["height"])
        sizes[(image.size, meta["category"])] += 1
    assert set(sizes.values()) == {2}  # 3 sizes x 6 categories, twice each


def test_one_ratio_of_1_1_is_the_square_default_byte_for_byte(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "a"), "--num", "12", "--shards", "1"]) == 0
    assert main(["data", "synth", "--out", str(tmp_path / "b"), "--num", "12", "--shards", "1",
                 "--aspect-ratios", "1:1"]) == 0  # fmt: skip
    digest = [hashlib.sha256((tmp_path / d / "00000.tar").read_bytes()).hexdigest() for d in "ab"]
    assert digest[0] == digest[1]


@pytest.mark.parametrize("value, needle", [("1:9", "outside 1:4 to 4:1"), ("2x1", "width:height"),
                                           ("1:2,,2:1", "width:height"), ("0:1", "width:height")])  # fmt: skip
def test_bad_aspect_ratios_are_one_line_and_exit_2(value, needle, tmp_path, capsys):
    code = main(["data", "synth", "--out", str(tmp_path / "x"), "--num", "2", "--aspect-ratios", value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("nami: error: --aspect-ratios") and needle in err
    assert not (tmp_path / "x").exists()
