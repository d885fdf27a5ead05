"""`nami eval fid` / `nami eval clip` on folders: the FID of a folder against itself is 0, FID equals the
reference implementation's (torch-fidelity, run here on the same folders and weights), precomputed statistics
give the same value, CLIP score equals torchmetrics', and bad input is one line with exit 2.

The FID Inception weights are random (tests/prompt_fixtures.py: the released ones cannot be shipped), of the
real network's shapes, so everything but the weights' values is the path real numbers take."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from nami.cli import main
from nami.eval.shapes import render

from .prompt_fixtures import random_inception_state, save_tiny_clip

pytestmark = pytest.mark.xdist_group("fid")  # one set of Inception weights per worker is plenty


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "weights-inception.pth"
    torch.save(random_inception_state(), path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two fixed small folders: GenEval-Shapes renders (32 px) and noisy photos-to-be (40 x 48, other sizes)."""
    from nami.eval import prompt_set

    root = tmp_path_factory.mktemp("folders")
    specs = prompt_set(1, seed=3)[:5]
    for i, spec in enumerate(specs):
        (root / "a").mkdir(exist_ok=True)
        render(spec).save(root / "a" / f"{i:03d}.png")
    rng = np.random.default_rng(0)
    (root / "b").mkdir()
    for i in range(4):
        Image.fromarray((rng.random((40, 48, 3)) * 200).astype(np.uint8)).save(root / "b" / f"{i:03d}.png")
    return root / "a", root / "b", specs


def nami(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_fid_of_a_folder_against_itself_is_zero_and_its_statistics_give_the_same(folders, inception, capsys,
                                                                                   tmp_path):  # fmt: skip
    a, b, _ = folders
    code, out, err = nami(capsys, "eval", "fid", a, a, "--weights", inception, "--json", "--save-stats",
                          tmp_path / "a.npz", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert abs(report["fid"]) < 1e-3 and report["images"] == report["reference_images"] == 5
    with np.load(tmp_path / "a.npz", allow_pickle=False) as stats:
        assert stats["mu"].shape == (2048,) and stats["sigma"].shape == (2048, 2048) and int(stats["count"]) == 5
    code, out, _ = nami(capsys, "eval", "fid", b, a, "--weights", inception, "--json")
    between = json.loads(out)["fid"]
    code, out, _ = nami(capsys, "eval", "fid", b, tmp_path / "a.npz", "--weights", inception, "--json")
    assert code == 0 and between > 1.0 and json.loads(out)["fid"] == pytest.approx(between, abs=1e-6)


@pytest.mark.slow
def test_fid_between_two_folders_is_the_reference_implementations(folders, inception, capsys):
    """torch-fidelity's calculate_metrics (its folder reader, its Inception, its statistics and distance) on the
    same folders and weights; torchmetrics' FID class wraps the same network."""
    import torch_fidelity

    a, b, _ = folders
    code, out, err = nami(capsys, "eval", "fid", a, b, "--weights", inception, "--json", "--device", "cpu")
    assert code == 0, err
    ours = json.loads(out)["fid"]
    reference = torch_fidelity.calculate_metrics(input1=str(a), input2=str(b), fid=True, cuda=False, cache=False,
                                                 verbose=False, feature_extractor="inception-v3-compat",
                                                 feature_extractor_weights_path=str(inception), save_cpu_ram=True,
                                                 batch_size=4)["frechet_inception_distance"]  # fmt: skip
    assert ours > 1.0 and ours == pytest.approx(reference, abs=1e-3)


@pytest.mark.filterwarnings("ignore:`max_length` is ignored")  # the tokenizer, on torchmetrics' padding
def test_clip_score_of_a_folder_is_torchmetrics_on_the_same_images(folders, tmp_path, capsys):
    from torchmetrics.functional.multimodal import clip_score
    from transformers import CLIPModel, CLIPProcessor

    _, _, specs = folders
    clip = save_tiny_clip(tmp_path / "clip")
    out = tmp_path / "geneval"  # GenEval's layout, written by hand: two images per prompt
    images, prompts = [], []
    for i, spec in enumerate(specs):
        (out / f"{i:05d}" / "samples").mkdir(parents=True)
        (out / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps({"tag": spec["category"], "prompt": spec["caption"]}))
        for j, side in enumerate((32, 40)):
            image = render(spec, resolution=side)
            image.save(out / f"{i:05d}" / "samples" / f"{j:04d}.png")
            images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1))
            prompts.append(spec["caption"])
    code, text, err = nami(capsys, "eval", "clip", out, "--clip", clip, "--json", "--batch-size", "3")
    assert code == 0, err
    report = json.loads(text)
    assert report["images"] == 10

    class Features(torch.nn.Module):  # transformers 5 returns output objects; torchmetrics 1.9 wants tensors
        def __init__(self, model):
            super().__init__()
            self.model, self.config = model, model.config

        def get_image_features(self, pixel_values):
            return self.model.get_image_features(pixel_values=pixel_values).pooler_output

        def get_text_features(self, input_ids, attention_mask):
            return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    model, processor = Features(CLIPModel.from_pretrained(clip).eval()), CLIPProcessor.from_pretrained(clip)
    with torch.no_grad():
        expected = clip_score(images, prompts, model_name_or_path=lambda: (model, processor))
    assert report["clip_score"] == pytest.approx(float(expected), abs=1e-4)


def test_bad_folders_and_weights_are_one_line_and_exit_2(folders, inception, tmp_path, capsys):
    a, _, _ = folders
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    state = torch.load(inception, weights_only=True)
    state["Conv2d_1a_3x3.conv.weight"] = torch.zeros(8, 3, 3, 3)  # another network's first layer
    torch.save(state, tmp_path / "wrong.pth")
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, tmp_path / "torchvision-head.pth")
    (tmp_path / "nan.npz").write_bytes(b"not an npz")
    cases = [
        ((a, tmp_path / "empty", "--weights", inception), r"REFERENCE: .*empty holds no images"),
        ((tmp_path / "empty", a, "--weights", inception), r"DIR: .*empty holds no images"),
        ((a, a, "--weights", tmp_path / "wrong.pth"),
         r"--weights: .*wrong\.pth are not the FID Inception weights \(size mismatch for Conv2d_1a_3x3"),
        ((a, a, "--weights", tmp_path / "torchvision-head.pth"), r"--weights: .* are not the FID Inception weights"),
        ((a, a, "--weights", tmp_path / "absent.pth"), r"--weights: FID Inception weights .*absent\.pth do not exist"),
        ((a, tmp_path / "nan.npz", "--weights", inception), r"REFERENCE: .*nan\.npz is not a readable \.npz"),
    ]  # fmt: skip
    for args, message in cases:
        code, out, err = nami(capsys, "eval", "fid", *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and re.search(message, err), err
    code, _, err = nami(capsys, "eval", "clip", tmp_path / "empty", "--clip", tmp_path)
    assert code == 2 and "holds no prompted images" in err
