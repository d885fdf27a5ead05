"""What a config's `data` section names, checked before any compute: the shards (resolved by their format and,
for data.precomputed, checked against the config they were encoded with), one usable sample among them, and
the decoder every record of a stream goes through."""

from __future__ import annotations

from collections import Counter

from nami.config import ConfigError, NamiConfig

from .decode import DecodeOptions, Decoder, ImageDecoder, decode_record
from .formats import format_of, resolve_data
from .precomputed import PayloadLayout, PrecomputedDecoder
from .precomputed_dir import check_precomputed
from .records import Failure, ReadOptions, Shard, Skip


def decoder_for(cfg: NamiConfig) -> Decoder:
    """The decoder of every record of a stream, chosen once: data.precomputed's, or images'."""
    if cfg.data.precomputed:
        return PrecomputedDecoder(PayloadLayout.from_config(cfg))
    return ImageDecoder(DecodeOptions.from_config(cfg))


def checked_shards(cfg: NamiConfig) -> list[Shard]:
    """The shards `cfg.data` names (ConfigError naming the pattern when one matches nothing, or with
    data.precomputed the key whose value differs from what the shards were encoded with)."""
    shards = resolve_data(cfg.data)
    if cfg.data.precomputed:
        check_precomputed(cfg, shards)
    return shards


def usable_shards(cfg: NamiConfig) -> list[Shard]:
    """`checked_shards`, and one usable sample found among them, reading shards in order (usually the first
    record of the first shard): shards that hold none at all (empty or wrong files) are one ConfigError line
    here, before any model is built, instead of a worker's traceback once training has started."""
    shards = checked_shards(cfg)
    decoder, skipped = decoder_for(cfg), Counter()
    for shard in shards:
        fmt = format_of(shard)
        for item in fmt.read(shard, options=ReadOptions.from_data(cfg.data)):
            if isinstance(item, Failure):
                skipped[item.reason] += 1
                continue
            try:
                decode_record(decoder, item, fmt.columnar, Counter())
                return shards
            except Skip as skip:
                skipped[skip.reason] += 1
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "no records"
    raise ConfigError("data.shards", f"no usable sample in {len(shards)} shard(s) ({reasons}); "
                                     "see `nami data check CONFIG`")  # fmt: skip
