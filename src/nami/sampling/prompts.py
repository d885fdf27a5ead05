"""Prompt files: what `nami sample --prompts` and `eval.kind: prompts` read, and the seed of every image.

A prompt file is one of
- text: one prompt per non-blank line (surrounding whitespace dropped);
- JSONL (`.jsonl`, `.ndjson`): one JSON object per non-blank line with a non-empty string `prompt`; the other
  fields travel with the prompt into the output metadata (GenEval's `evaluation_metadata.jsonl` is such a file:
  each line becomes its folder's `metadata.jsonl`). An `id` field names the prompt's DPG-Bench image;
- a directory of `*.txt` files, one prompt each, named by its id (DPG-Bench ships its prompts this way);
- the name of a prompt set shipped with the kit (`PROMPT_SETS`), when no file of that name exists.

Every failure is one ConfigError line naming the key the path came from and, for a bad line, its number.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
MAX_PROMPT_FILE_BYTES = 256 << 20  # DPG-Bench's 1,065 prompts are ~0.7 MB; COCO-30k captions ~2 MB
MAX_PROMPTS = 1_000_000
# Prompt sets shipped with the kit, by name: file, licence and where they come from (README, "Evaluating on
# real prompts"). GenEval's prompts are MIT-licensed (Copyright (c) 2023 Dhruba Ghosh).
PROMPT_SET_DIR = Path(__file__).with_name("prompt_sets")
PROMPT_SETS = {"geneval": PROMPT_SET_DIR / "geneval_evaluation_metadata.jsonl"}
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # an id that is a file name on every system, without a dot


@dataclass(frozen=True)
class PromptEntry:
    """Prompt `index` of its file: the text, its JSON object (a text line's is {"prompt": text}) and its id
    (the JSONL `id` field or the file's stem; otherwise the index, zero-padded to five digits)."""

    index: int
    prompt: str
    record: dict[str, Any]
    id: str


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The noise seed of image `image_index` of prompt `prompt_index`: the first 63 bits of
    sha256("<seed>:<prompt_index>:<image_index>"). It depends on those three numbers only, so any image of a
    prompt file can be sampled again alone (`nami sample --prompt TEXT --seed <its seed>`), and adding prompts
    or images per prompt leaves the seeds of the others as they were."""
    digest = hashlib.sha256(f"{seed}:{prompt_index}:{image_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def prompts_digest(entries: list[PromptEntry]) -> str:
    """What identifies a prompt file's content (not its path): every prompt's object and id, in order."""
    canonical = json.dumps([[e.id, e.record] for e in entries], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolve_prompt_source(source: str | Path, key: str = "--prompts") -> Path:
    """The path a prompt-file argument stands for: the file or directory, or a shipped set's file."""
    path = Path(source)
    if path.exists():
        return path
    if str(source) in PROMPT_SETS:
        return PROMPT_SETS[str(source)]
    shipped = f" (or a shipped set: {', '.join(PROMPT_SETS)})" if PROMPT_SETS else ""
    raise ConfigError(key, f"prompt file {source} does not exist{shipped}")


def read_prompts(source: str | Path, key: str = "--prompts") -> list[PromptEntry]:
    """Every prompt of a prompt file, directory or shipped set, in order (module docstring)."""
    path = resolve_prompt_source(source, key)
    if path.is_dir():
        entries = _read_directory(path, key)
    else:
        text = _read_text(path, key)
        lines = text.splitlines()
        if path.suffix.lower() in JSONL_SUFFIXES:
            entries = _read_jsonl(path, lines, key)
        else:
            prompts = [line.strip() for line in lines if line.strip()]
            entries = [PromptEntry(i, p, {"prompt": p}, f"{i:05d}") for i, p in enumerate(prompts)]
    if not entries:
        raise ConfigError(key, f"{path} holds no prompts")
    if len(entries) > MAX_PROMPTS:
        raise ConfigError(key, f"{path} holds {len(entries):,} prompts; at most {MAX_PROMPTS:,} per file")
    return entries


def _read_text(path: Path, key: str) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_PROMPT_FILE_BYTES:
            raise ConfigError(key, f"{path} is {size:,} bytes; a prompt file may hold at most "
                                   f"{MAX_PROMPT_FILE_BYTES:,}")  # fmt: skip
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(key, f"{path} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(key, f"cannot read {path} ({err.strerror or err})") from None


def _read_jsonl(path: Path, lines: list[str], key: str) -> list[PromptEntry]:
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as err:
            raise ConfigError(key, f"{where} is not a JSON object ({err.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(key, f"{where} is not a JSON object")
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(key, f'{where} has no "prompt" field (a non-empty string)')
        index = len(entries)
        name = record.get("id", f"{index:05d}")
        if isinstance(name, bool) or not isinstance(name, (str, int)):
            raise ConfigError(key, f'{where}: "id" must be a string or a number, got {name!r}')
        entries.append(PromptEntry(index, prompt.strip(), record, str(name)))
    return entries


def _read_directory(path: Path, key: str) -> list[PromptEntry]:
    files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
    entries = []
    for index, file in enumerate(files):
        prompt = _read_text(file, key).strip()
        if not prompt:
            raise ConfigError(key, f"{file} holds no prompt")
        entries.append(PromptEntry(index, prompt, {"prompt": prompt, "id": file.stem}, file.stem))
    return entries


def check_ids(entries: list[PromptEntry], key: str = "--prompts") -> None:
    """Ids that name one file each (DPG-Bench's image of a prompt is `<id>.png`; its scorer takes the name
    before the first dot as the id): letters, digits, '_' and '-' only, and no two alike."""
    seen: dict[str, int] = {}
    for e in entries:
        if not SAFE_ID.fullmatch(e.id):
            raise ConfigError(key, f"prompt {e.index}: id {e.id!r} cannot name a file (letters, digits, _ and - "
                                   "only)")  # fmt: skip
        if e.id in seen:
            raise ConfigError(key, f"prompts {seen[e.id]} and {e.index} share the id {e.id!r}")
        seen[e.id] = e.index
