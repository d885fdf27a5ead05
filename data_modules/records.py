"""What flows through the data pipeline, shared by every stage of it: a `Shard` (one input a format reads), its
`Record`s (undecoded samples) and `Failure`s (what went wrong in a shard), the decoded `Sample`, and `Skip`
(a record that is dropped) with the reasons skips and repairs are counted by.

A leaf: it imports nothing else of `data_modules` (only the config's `DataConfig`), so formats, decoders, the stream and the batch builder all
import it and never each other in a circle.

Ownership (`owned`): a shard's records are numbered 0, 1, ... in reading order; a reader owns those with
`index % stride == offset` (see `split.py`) and starts at its `start`-th owned record. Exactly one reader of a
shard owns index 0, and it alone reports a shard that cannot be read at all (`reports_bad_shard`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nami.config import DataConfig

if TYPE_CHECKING:
    import torch

    from nami.text_embedding import TextEmbedding

SKIP_REASONS = (
    "bad_shard",  # a shard that cannot be opened (missing, empty, not a tar / parquet)
    "truncated",  # the sample a shard was cut inside (every complete sample before it is kept)
    "missing_image",  # no image member / empty image column (precomputed: no latent payload)
    "empty_image",  # zero-byte image
    "undecodable",  # the decoder failed
    "too_small",  # shorter side < data.min_size
    "too_large",  # more pixels than data.max_pixels (decompression bomb), rejected before decoding
    "no_caption",  # no .txt, no json[data.caption_column], no caption column (or only whitespace)
    "too_large_member",  # a tar member or a row's value above data.max_member_bytes: refused before it is read
    "sparse_member",  # a GNU sparse tar member (no webdataset writer makes one; its holes would read as zeros)
    "bad_payload",  # precomputed: tensors or header unlike what nami-encode.json and the config say
)
REPAIR_REASONS = (
    "caption_not_utf8",  # kept, invalid bytes (or lone surrogates) replaced by U+FFFD
    "caption_truncated",  # kept, cut to MAX_CAPTION_BYTES (metadata.py) on a character boundary
    "bad_json",  # kept, metadata {}: not JSON, too large or too deep (the caption then comes from .txt)
)


@dataclass(frozen=True)
class Shard:
    """One input of a format (`data.format`, a name in `nami.registry.DATA_FORMATS`): its URL (a plain path
    when local, or a name when the input is not a file) and `format`, the name of the format that reads it.
    A format whose inputs are not whole files says which part of what with `part` and `origin` (hf: library
    shard `part` of the dataset `origin`); both must pickle, since DataLoader workers receive shards."""

    url: str
    format: str
    part: int = 0
    origin: Any = None


@dataclass
class Record:
    """One undecoded sample as its format read it: members by extension (bytes; tars) or a row by column
    (parquet, hf), as the format's `columnar` says."""

    key: str
    index: int
    shard: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failure:
    """A problem in the stream: `bad_shard` (cannot be opened), `truncated` (unreadable from `index` on), or
    one record the reader refused (`too_large_member`, `sparse_member`: unread) or could not turn into Python
    values (`undecodable`); after those the stream goes on with the next record."""

    reason: str
    index: int
    shard: str
    detail: str = ""


class Skip(Exception):
    """A sample that is dropped; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Sample:
    """A decoded sample: image (3, H, W) float32 in [-1, 1] at its aspect-ratio bucket `size` (height, width in
    pixels; resolution x resolution with data.buckets square), caption, metadata as written, epoch read in;
    `crop` is the crop taken (the bucket's aspect ratio), as fractions (left, top, right, bottom) of the decoded
    image.

    From precomputed shards (data.precomputed) `image` is the stored full-size latent (C, h, w) of its bucket
    `size` and `text` the stored text embedding of the caption, one row (states (L, D), mask (L,), pooled (P,))."""

    key: str
    image: torch.Tensor
    caption: str
    metadata: Any
    epoch: int = 0
    crop: tuple[float, float, float, float] | None = None
    text: TextEmbedding | None = None
    size: tuple[int, int] | None = None  # the bucket, (height, width) in pixels; batches hold one size each


@dataclass(frozen=True)
class ReadOptions:
    """What a format's reader takes from the config (`data.*`): the key column of row formats, and the most
    bytes one member or row value may hold (`data.max_member_bytes`); a larger one is refused before it is
    read (`too_large_member`), so no single record allocates more than that bound in the reader."""

    key_column: str = "key"
    max_member_bytes: int = DataConfig.max_member_bytes  # its default

    @classmethod
    def from_data(cls, data) -> ReadOptions:
        """The options of a config's `data` section."""
        return cls(data.key_column, data.max_member_bytes)


def owned(index: int, stride: int, offset: int, start: int) -> bool:
    """Whether a reader (stride, offset, from its `start`-th owned record) owns record `index`."""
    return index % stride == offset and index // stride >= start


def reports_bad_shard(offset: int, start: int) -> bool:
    """Whether this reader reports a shard that cannot be opened: the one owning index 0, from the start."""
    return offset == 0 and start == 0
