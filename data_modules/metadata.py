"""A record's caption and json metadata as the decoders read them, each within a stated bound: a caption is cut
to MAX_CAPTION_BYTES before anything tokenises it, and a json member is parsed only up to MAX_JSON_BYTES and
kept only up to MAX_JSON_DEPTH levels of nesting. What is repaired is counted (`records.REPAIR_REASONS`)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

# Captions are cut (on a character boundary, counted as caption_truncated) rather than skipped: a text encoder
# reads text_encoder.max_length tokens (256 for NAMI-2B's mT5) and drops the rest, and 64 KiB is over 10,000
# typical tokens (3-6 bytes each), or 1024 of SentencePiece's longest (16 characters). So the cut drops only
# text no encoder reads, the image is kept, and a 20 MB caption no longer costs seconds and gigabytes to
# tokenise.
MAX_CAPTION_BYTES = 64 * 2**10
# Metadata json: img2dataset and GRIT write a few KB. Larger or deeper is kept as {} (counted as bad_json):
# Python objects of a parsed json take 10-50x its bytes, and a sample's metadata is pickled to the main
# process (and re-serialised by `nami data encode`) by recursive code that a deep nesting would exhaust.
MAX_JSON_BYTES = 2**20
MAX_JSON_DEPTH = 64


def caption_text(raw: Any, repaired: Counter) -> str | None:
    """A caption field as stripped text, or None when empty or not text. Bytes are decoded as UTF-8 and a
    str's lone surrogates (json escapes) replaced, both counted as caption_not_utf8; anything longer than
    MAX_CAPTION_BYTES is cut to it on a character boundary (caption_truncated)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        return None
    raw = bytes(raw)
    if len(raw) > MAX_CAPTION_BYTES:
        cut = MAX_CAPTION_BYTES
        while cut > MAX_CAPTION_BYTES - 3 and raw[cut] & 0xC0 == 0x80:  # a continuation byte: not a boundary
            cut -= 1
        raw = raw[:cut]
        repaired["caption_truncated"] += 1
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        repaired["caption_not_utf8"] += 1
        text = raw.decode("utf-8", errors="replace")
    return text.strip() or None


def json_metadata(fields: dict[str, Any], repaired: Counter) -> Any:
    """A record's `json` member parsed ({} when there is none; kept as {} and counted as bad_json when it does
    not parse, or is larger than MAX_JSON_BYTES or nested deeper than MAX_JSON_DEPTH)."""
    if "json" not in fields:
        return {}
    data = fields["json"]
    try:
        if len(data) > MAX_JSON_BYTES:
            raise ValueError(f"{len(data)} bytes")
        value = json.loads(data)
        if not _shallow(value, data):
            raise ValueError("nested too deep")
        return value
    except (ValueError, TypeError, RecursionError):  # ValueError includes UnicodeDecodeError
        repaired["bad_json"] += 1
        return {}


def _shallow(value: Any, data: Any) -> bool:
    """Whether parsed json `value` nests at most MAX_JSON_DEPTH containers (walked only when its text holds
    that many opening brackets at all)."""
    text = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if text.count(b"[") + text.count(b"{") <= MAX_JSON_DEPTH:
        return True
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return False
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True
