"""`nami sample --prompts`: prompt files, per-image seeds, the GenEval / DPG-Bench / flat layouts read back the
way the benchmarks' own scripts read them, and a run killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nami.cli import main
from nami.sampling.prompts import PROMPT_SETS, image_seed, read_prompts

from .helpers import REPO
from .prompt_fixtures import random_model_dir

GENEVAL_LINES = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
     "prompt": "a photo of two clocks"},
    {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
]  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return random_model_dir(tmp_path_factory.mktemp("model") / "tiny")


def nami(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def geneval_walk(imagedir: str) -> list[tuple[str, dict]]:
    """The directory walk of GenEval's evaluation/evaluate_images.py (`main`), copied from its code: every
    sub-folder whose name is digits holds metadata.jsonl, read with json.load (one JSON object), and the files
    of samples/ whose names match `\\d+\\.png` (re.match) are its images."""
    found = []
    for subfolder in os.listdir(imagedir):
        folderpath = os.path.join(imagedir, subfolder)
        if not os.path.isdir(folderpath) or not subfolder.isdigit():
            continue
        with open(os.path.join(folderpath, "metadata.jsonl")) as fp:
            metadata = json.load(fp)
        for imagename in os.listdir(os.path.join(folderpath, "samples")):
            imagepath = os.path.join(folderpath, "samples", imagename)
            if not os.path.isfile(imagepath) or not re.match(r"\d+\.png", imagename):
                continue
            found.append((imagepath, metadata))
    return found


def test_prompt_files_text_jsonl_directory_and_the_shipped_geneval_set(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\n  two squares  \n")
    assert [(e.index, e.prompt, e.id) for e in read_prompts(tmp_path / "p.txt")] == [
        (0, "a red circle", "00000"), (1, "two squares", "00001")]  # fmt: skip
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "tag": "x", "id": "cat"}\n\n{"prompt": "a dog"}\n')
    cat, dog = read_prompts(tmp_path / "p.jsonl")
    assert cat.record == {"prompt": "a cat", "tag": "x", "id": "cat"} and (cat.id, dog.id) == ("cat", "00001")
    (tmp_path / "dpg").mkdir()
    for name, text in (("b", "second\n"), ("a", "first")):
        (tmp_path / "dpg" / f"{name}.txt").write_text(text)
    assert [(e.prompt, e.id) for e in read_prompts(tmp_path / "dpg")] == [("first", "a"), ("second", "b")]
    geneval = read_prompts("geneval")  # shipped (MIT), read by name
    assert len(geneval) == 553 and geneval[0].record == GENEVAL_LINES[0]
    assert PROMPT_SETS["geneval"].with_name("LICENSE-geneval").read_text().startswith("MIT License")


def test_image_seeds_depend_on_seed_prompt_and_image_only():
    seeds = {image_seed(s, i, j) for s in (0, 1) for i in range(20) for j in range(4)}
    assert len(seeds) == 160 and all(0 <= s < 2**63 for s in seeds)
    # pinned: the documented rule (sha256 of "seed:prompt:image", first 63 bits), so recorded seeds stay valid
    assert (image_seed(7, 3, 1), image_seed(0, 0, 0)) == (5863225208130444487, 8387133978117270309)
    assert image_seed(7, 3, 1) != image_seed(7, 1, 3)


@pytest.mark.parametrize("content, suffix, message", [
    (None, ".txt", r"--prompts: prompt file .*absent\.txt does not exist"),
    ("\n  \n", ".txt", r"--prompts: .*holds no prompts"),
    ('{"prompt": "a cat"}\n{"text": "a dog"}\n', ".jsonl", r'--prompts: .*\.jsonl:2 has no "prompt" field'),
    ('{"prompt": "a cat"\n', ".jsonl", r"--prompts: .*\.jsonl:1 is not a JSON object"),
])  # fmt: skip
def test_bad_prompt_files_are_one_line_and_exit_2(model, tmp_path, capsys, content, suffix, message):
    path = tmp_path / f"absent{suffix}" if content is None else tmp_path / f"p{suffix}"
    if content is not None:
        path.write_text(content)
    code, out, err = nami(capsys, "sample", "--ckpt", model, "--prompts", path, "--out", tmp_path / "out")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_geneval_layout_is_what_genevals_evaluation_script_reads(model, tmp_path, capsys):
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in GENEVAL_LINES))
    out = tmp_path / "geneval"
    code, _, err = nami(capsys, "sample", "--ckpt", model, "--prompts", prompts, "--images-per-prompt", "2",
                        "--layout", "geneval", "--out", out, "--batch-size", "4")  # fmt: skip
    assert code == 0, err
    found = geneval_walk(str(out))
    assert len(found) == 6
    by_folder = {}
    for imagepath, metadata in found:
        folder = os.path.basename(os.path.dirname(os.path.dirname(imagepath)))
        by_folder.setdefault(folder, []).append((os.path.basename(imagepath), metadata))
    assert sorted(by_folder) == ["00000", "00001", "00002"]
    for i, line in enumerate(GENEVAL_LINES):
        names = sorted(name for name, _ in by_folder[f"{i:05d}"])
        assert names == ["0000.png", "0001.png"]
        assert all(metadata == line for _, metadata in by_folder[f"{i:05d}"])  # the prompt's JSON line, all fields
        assert (out / f"{i:05d}" / "metadata.jsonl").read_text() == json.dumps(line)  # as GenEval's generator writes
    images = [np.asarray(Image.open(path)) for path, _ in found]
    assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)
    assert len({im.tobytes() for im in images}) == 6  # one seed per image: no two alike
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["image_index"]) for r in index] == [(i, j) for i in range(3) for j in range(2)]
    assert all(r["seed"] == image_seed(0, r["prompt_index"], r["image_index"]) for r in index)
    assert index[2]["metadata"] == GENEVAL_LINES[1] and index[2]["file"] == "00001/samples/0000.png"


def test_dpg_layout_holds_one_grid_per_prompt_id_that_the_scorer_crops_back(model, tmp_path, capsys):
    prompts = tmp_path / "dpg"
    prompts.mkdir()
    for name, text in (("partiprompts7", "a red circle on a table"), ("coco12", "two blue squares")):
        (prompts / f"{name}.txt").write_text(text)
    out = tmp_path / "dpg-out"
    code, _, err = nami(capsys, "sample", "--ckpt", model, "--prompts", prompts, "--images-per-prompt", "3",
                        "--layout", "dpg", "--out", out, "--batch-size", "4")  # fmt: skip
    assert code == 0, err
    root = out / "images"  # compute_dpg_bench.py --image-root-path: every file there is one prompt's grid
    assert sorted(os.listdir(root)) == ["coco12.png", "partiprompts7.png"]
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    resolution = 32
    crops = [(0, 0, resolution, resolution), (resolution, 0, resolution * 2, resolution),
             (0, resolution, resolution, resolution * 2), (resolution, resolution, resolution * 2, resolution * 2)]
    for filename in os.listdir(root):
        key = os.path.basename(filename).split(".")[0]  # the scorer's question_dict key
        grid = Image.open(root / filename)
        assert grid.size == (2 * resolution, 2 * resolution)
        singles = [r for r in index if r["id"] == key]
        assert [r["image_index"] for r in singles] == [0, 1, 2]
        for crop, row in zip(crops[:3], singles):  # --pic-num 3
            assert np.array_equal(np.asarray(grid.crop(crop)), np.asarray(Image.open(out / row["file"])))
    code, _, err = nami(capsys, "sample", "--ckpt", model, "--prompts", prompts, "--images-per-prompt", "5",
                        "--layout", "dpg", "--out", tmp_path / "five")  # fmt: skip
    assert code == 2 and "--images-per-prompt: DPG-Bench's scorer reads at most 4 images" in err


def test_a_directory_of_another_run_or_other_files_is_refused_in_one_line(model, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\ntwo squares\n")
    out = tmp_path / "flat"
    base = ["sample", "--ckpt", model, "--prompts", prompts, "--out", out, "--images-per-prompt", "2"]
    assert nami(capsys, *base)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png", "000003.png",
                                                     "index.jsonl", "nami-sample.json"]  # fmt: skip
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = tmp_path / "other.txt"
    other.write_text("a blue circle\ntwo squares\n")
    for args, what in (((*base[:4], other, *base[5:]), r"prompts=.*another prompt file"),
                       ((*base, "--seed", "1"), r"seed=0, this call has 1 \(other settings\)"),
                       ((*base, "--steps", "1,1,1"), r"sampler\.steps=\[2, 1, 1\], this call has \[1, 1, 1\]"),
                       ((*base, "--layout", "geneval"), r"layout='flat'")):  # fmt: skip
        code, _, err = nami(capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and re.search(what, err), err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    code, out_text, _ = nami(capsys, *base)  # the same arguments: nothing to do, nothing replaced
    assert code == 0 and "0 images written, 4 were there" in out_text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = nami(capsys, *base[:5], "--out", tmp_path / "busy")
    assert code == 2 and "holds no nami-sample.json" in err


KILLED_RUN = """
import os, signal, sys
import nami.sampling.layouts as layouts
from nami.cli import main

kill_at, calls, save = int(sys.argv[1]), [0], layouts.save_png

def save_then_die(image, path):
    calls[0] += 1
    if calls[0] == kill_at:  # half an image on disk, then SIGKILL: no handler, no cleanup
        with open(path, "wb") as handle:
            handle.write(b"\\x89PNG half")
        os.kill(os.getpid(), signal.SIGKILL)
    save(image, path)

layouts.save_png = save_then_die
sys.exit(main(sys.argv[2:]))
"""


def test_killed_with_sigkill_and_run_again_every_image_is_there_once_and_bit_equal(model, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"prompt {i}", "n": i}) + "\n" for i in range(5)))
    args = ["sample", "--ckpt", str(model), "--prompts", str(prompts), "--images-per-prompt", "2", "--layout",
            "geneval", "--batch-size", "3"]  # fmt: skip
    assert nami(capsys, *args, "--out", tmp_path / "whole")[0] == 0
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    # image 5 is the second of batch 2 (images 4-6): one image of that batch written, one half-written
    result = subprocess.run([sys.executable, "-c", KILLED_RUN, "5", *args, "--out", str(killed)], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == -9, result.stderr[-2000:]
    written = sorted(p.relative_to(killed) for p in killed.rglob("*.png"))
    assert len(written) == 4 and (killed / ".lock").exists() and not (killed / "index.jsonl").exists()
    assert list(killed.rglob(".*.partial-*"))  # the half-written image never got its name
    code, out, err = nami(capsys, *args, "--out", killed)
    assert code == 0 and "6 images written, 4 were there, 10 in all" in out, err
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    whole, resumed = files(tmp_path / "whole"), files(killed)
    assert resumed.keys() == whole.keys()  # every image once, no partial file, no lock left
    assert all(resumed[name] == whole[name] for name in whole)  # bit for bit, index and metadata too
    assert len(geneval_walk(str(killed))) == 10
