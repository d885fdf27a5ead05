"""Fuzzing the decoders (issue 23, acceptance): seeded random byte flips, truncations, nesting and type swaps of
valid samples, for tars, parquet, hf datasets and precomputed shards (payloads and the directory's description
files). Every case must end as counted skips or as one ConfigError line, and the valid samples around the
damaged one must all come out, each once. Deterministic: one seed, cases generated in a fixed order.

Damage inside a sample (its members, its row, its payload) leaves the archive or file around it valid, so
every record is accounted for: samples + skips = records. Damage to a whole file (a tar's headers, a parquet
footer) may cost the rest of that file (`truncated`, `bad_shard`), never a sample of another file.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from collections import Counter
from dataclasses import replace


from data_modules.inputs import checked_shards
from nami.config import ConfigError

from .data_fixtures import data_cfg, encode, read_as_readers, rgb_png
from .hostile_fixtures import ZERO_BLOCKS, precomputed_cfg, precomputed_sample, sample_members, write_precomputed

SEED = 23
CASES = {"tar": 160, "tar_file": 60, "parquet": 60, "parquet_file": 30, "hf": 24, "hf_file": 20, "precomputed": 100,
         "description": 40}  # fmt: skip


# ---- mutations --------------------------------------------------------------------------------------------
def flip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return rng.randbytes(rng.randint(1, 8))
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= rng.randint(1, 255)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def nested(rng: random.Random) -> bytes:
    depth = rng.choice([3, 63, 65, 500, 5_000, 100_000])
    opening, closing = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    return opening * depth + b"1" + closing * depth


def other_value(rng: random.Random):
    """A JSON value of a type a field does not expect."""
    return rng.choice([None, 0, -1, 2**70, 1.5, float("inf"), True, "", " ", "x" * 70_000, "\ud800", [], [1, [2]],
                       {"caption": 3}, {"bytes": 7}, "é" * 40_000])  # fmt: skip


def bytes_value(rng: random.Random, good: bytes) -> bytes:
    """Bytes of a sample's member, damaged one of several ways."""
    kind = rng.randrange(7)
    if kind == 0:
        return flip(rng, good)
    if kind == 1:
        return truncate(rng, good)
    if kind == 2:
        return nested(rng)
    if kind == 3:
        return json.dumps(other_value(rng)).encode()
    if kind == 4:
        return rng.choice([b"", b"\0" * 64, b"\xff\xfe\xfd", "\ud800x".encode("utf-8", "surrogatepass"), b" \n\t"])
    if kind == 5:
        return rng.randbytes(rng.choice([1, 100, 5000]))
    return good[:8] + rng.randbytes(200)  # a real header, then noise


# ---- one case ---------------------------------------------------------------------------------------------
def outcome(cfg) -> tuple[list[str], Counter] | str:
    """One evaluation epoch of `cfg` (the training reader, in this process): the keys read and the skips, or
    the message of the one ConfigError that refuses the data."""
    try:
        checked_shards(cfg)
        return read_as_readers(cfg, 1, 1)
    except ConfigError as err:
        return str(err)


def assert_contained(result, around: list[str], damaged: set[str], records: int | None):
    """The valid samples `around` all came out once; nothing else than the `damaged` keys; with `records`,
    every record is a sample or a counted skip. A ConfigError is accepted as one line."""
    if isinstance(result, str):
        assert "\n" not in result, result
        return
    keys, skipped = result
    counts = Counter(keys)
    assert all(counts[k] == 1 for k in around), (counts, skipped)
    assert set(counts) <= set(around) | damaged and all(v == 1 for v in counts.values()), counts
    if records is not None:
        assert len(keys) + sum(skipped.values()) == records, (keys, skipped)


def image(rng: random.Random, seed: int) -> tuple[str, bytes]:
    """A valid image of one of three formats (each decoder of PIL's gets its share of damage)."""
    from PIL import Image

    ext = rng.choice(["png", "jpg", "webp"])
    if ext == "png":
        return ext, rgb_png(seed)
    return ext, encode(Image.open(io.BytesIO(rgb_png(seed))), "JPEG" if ext == "jpg" else "WEBP")


# ---- tars -------------------------------------------------------------------------------------------------
def tar_sample(rng: random.Random, key: str, seed: int) -> dict:
    ext, data = image(rng, seed)
    return {"__key__": key, ext: data, "txt": f"caption {key}".encode(), "json": json.dumps({"i": seed}).encode()}


def damaged_tar_sample(rng: random.Random, key: str) -> dict:
    sample = tar_sample(rng, key, 99)
    exts = [e for e in sample if e != "__key__"]
    for ext in rng.sample(exts, rng.randint(1, len(exts))):
        if rng.random() < 0.1:
            del sample[ext]
        else:
            sample[ext] = bytes_value(rng, sample[ext])
    if rng.random() < 0.2:  # a json caption of the wrong type, no .txt
        sample.pop("txt", None)
        sample["json"] = json.dumps({"caption": other_value(rng)}).encode()
    return sample


def test_damaged_tar_samples_cost_one_skip_at_most(tmp_path):
    rng = random.Random(f"{SEED}:tar")
    shard = tmp_path / "s.tar"
    cfg = data_cfg(str(shard), "data.num_workers=0", "data.batch_size=1", "data.min_size=8")
    for case in range(CASES["tar"]):
        around = [tar_sample(rng, f"a{case}_{i}", i) for i in range(2)]
        shard.write_bytes(sample_members(around[0]) + sample_members(damaged_tar_sample(rng, "x"))
                          + sample_members(around[1]) + ZERO_BLOCKS)  # fmt: skip
        assert_contained(outcome(cfg), [s["__key__"] for s in around], {"x"}, records=3)


def test_damaged_tar_files_cost_that_file_at_most(tmp_path):
    rng = random.Random(f"{SEED}:tar_file")
    names = ["n0.tar", "x.tar", "n1.tar"]
    cfg = data_cfg("[" + ",".join(str(tmp_path / n) for n in names) + "]", "data.num_workers=0", "data.batch_size=1")
    for case in range(CASES["tar_file"]):
        samples = {n: [tar_sample(rng, f"{n.split('.')[0]}_{case}_{i}", i) for i in range(3)] for n in names}
        for name, group in samples.items():
            body = b"".join(sample_members(s) for s in group) + ZERO_BLOCKS
            if name == "x.tar":
                body = rng.choice([flip, truncate])(rng, body)
                if rng.random() < 0.3:
                    body = rng.choice([flip, truncate, lambda r, b: b])(rng, gzip.compress(body))
            (tmp_path / name).write_bytes(body)
        around = [s["__key__"] for n in ("n0.tar", "n1.tar") for s in samples[n]]
        assert_contained(outcome(cfg), around, {s["__key__"] for s in samples["x.tar"]}, records=None)


# ---- rows: parquet and hf ---------------------------------------------------------------------------------
def row(rng: random.Random, key: str, seed: int) -> dict:
    return {"key": key, "caption": f"caption {key}", "image": image(rng, seed)[1], "score": float(seed)}


def damaged_row(rng: random.Random, key: str, hf: bool = False) -> dict:
    """A row with one or two columns damaged: image bytes, or a column of another type (a struct image with
    wrong fields, nested lists, a caption that is no text)."""
    out = row(rng, key, 99)
    columns = {rng.choice(["image", "caption", "key", "extra"])} | ({"image"} if rng.random() < 0.5 else set())
    for column in sorted(columns):
        kind = rng.randrange(4)
        if column == "image" and kind < 2:
            out["image"] = bytes_value(rng, out["image"])
        elif column == "image" and kind == 2:
            out["image"] = rng.choice([{"bytes": 7, "path": None}, {"bytes": None, "path": "/nonexistent.png"},
                                       {"bytes": b"\0", "path": 3}, {"bytes": bytes_value(rng, out["image"]), "path": None}])  # fmt: skip
        elif column == "extra":
            depth = rng.choice([2, 20, 40] if hf else [2, 20, 70])
            value = 1
            for _ in range(depth):
                value = [value]
            out["extra"] = value
        else:
            value = other_value(rng)
            out[column] = None if isinstance(value, str) and "\ud800" in value else value  # Arrow holds no surrogates
    return out


def write_parquet(path, rows: list[dict]) -> bool:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pq.write_table(pa.Table.from_pylist(rows), path)
        return True
    except (pa.ArrowException, OverflowError, TypeError, ValueError):  # a value Arrow cannot hold: no case
        return False


def test_damaged_parquet_rows_cost_one_skip_at_most(tmp_path):
    rng = random.Random(f"{SEED}:parquet")
    cfg = data_cfg(f"{tmp_path}/*.parquet", "data.num_workers=0", "data.batch_size=1")
    done = 0
    while done < CASES["parquet"]:
        around = [row(rng, f"a{done}_{i}", i) for i in range(2)]
        if not write_parquet(tmp_path / "x.parquet", [damaged_row(rng, "x")]):
            continue
        for i, r in enumerate(around):
            write_parquet(tmp_path / f"a{i}.parquet", [r])
        keys = [r["key"] for r in around]
        result = outcome(cfg)  # a damaged key column names the row by anything
        assert_contained(result, keys, _other_keys(result, keys), records=3)
        done += 1


def _other_keys(result, keys: list[str]) -> set[str]:
    """Keys that a damaged key column produced (str() of any value): all but the valid rows' own."""
    return set() if isinstance(result, str) else {k for k in result[0] if k not in keys}


def test_damaged_parquet_files_cost_that_file_at_most(tmp_path):
    rng = random.Random(f"{SEED}:parquet_file")
    cfg = data_cfg(f"{tmp_path}/*.parquet", "data.num_workers=0", "data.batch_size=1")
    for case in range(CASES["parquet_file"]):
        around = [row(rng, f"a{case}_{i}", i) for i in range(2)]
        for i, r in enumerate(around):
            write_parquet(tmp_path / f"a{i}.parquet", [r])
        write_parquet(tmp_path / "x.parquet", [row(rng, f"x{i}", i) for i in range(5)])
        path = tmp_path / "x.parquet"
        path.write_bytes(rng.choice([flip, truncate])(rng, path.read_bytes()))
        assert_contained(outcome(cfg), [r["key"] for r in around], {f"x{i}" for i in range(5)}, records=None)


def test_damaged_hf_rows_cost_one_skip_at_most(tmp_path):
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    rng = random.Random(f"{SEED}:hf")
    base = data_cfg(str(tmp_path), "data.format=hf", "data.num_workers=0", "data.batch_size=1")
    around = [row(rng, f"a{i}", i) for i in range(2)]
    for i, r in enumerate(around):
        Dataset.from_list([r]).save_to_disk(tmp_path / f"a{i}")
    done = 0
    while done < CASES["hf"]:
        damaged = damaged_row(rng, "x", hf=True)
        try:
            Dataset.from_list([damaged]).save_to_disk(tmp_path / f"x{done}")
        except Exception:  # noqa: BLE001 - a value `datasets` cannot store: no case
            continue
        shards = [str(tmp_path / "a0"), str(tmp_path / f"x{done}"), str(tmp_path / "a1")]
        cfg = replace(base, data=replace(base.data, shards=shards))
        result = outcome(cfg)
        assert_contained(result, ["a0", "a1"], _other_keys(result, ["a0", "a1"]), records=3)
        done += 1


def test_damaged_hf_files_cost_that_dataset_at_most(tmp_path):
    import shutil

    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    rng = random.Random(f"{SEED}:hf_file")
    around = [row(rng, f"a{i}", i) for i in range(2)]
    for i, r in enumerate(around):
        Dataset.from_list([r]).save_to_disk(tmp_path / f"a{i}")
    Dataset.from_list([row(rng, f"x{i}", i) for i in range(4)]).save_to_disk(tmp_path / "good")
    base = data_cfg(str(tmp_path), "data.format=hf", "data.num_workers=0", "data.batch_size=1")
    for case in range(CASES["hf_file"]):
        x = tmp_path / f"x{case}"
        shutil.copytree(tmp_path / "good", x)
        arrow = next(x.glob("*.arrow"))
        arrow.write_bytes(rng.choice([flip, truncate])(rng, arrow.read_bytes()))
        cfg = replace(base, data=replace(base.data, shards=[str(tmp_path / "a0"), str(x), str(tmp_path / "a1")]))
        assert_contained(outcome(cfg), ["a0", "a1"], {f"x{i}" for i in range(4)}, records=None)


# ---- precomputed shards -------------------------------------------------------------------------------
def damaged_payload(rng: random.Random, cfg, good: bytes) -> bytes:
    import torch
    from safetensors.torch import load, save

    kind = rng.randrange(4)
    if kind == 0:
        return bytes_value(rng, good)
    tensors = load(good)
    header = {"key": "x", "resolution": "32", "crop": "[0.0, 0.0, 1.0, 1.0]"}
    if kind == 1:  # a tensor of another shape, dtype or with non-finite values; one missing or extra
        name = rng.choice(sorted(tensors))
        t = tensors[name]
        change = rng.randrange(6)
        if change == 0:
            t = t.flatten()[: max(t.numel() - 1, 0)].clone()
        elif change == 1:
            t = t.to(rng.choice([torch.int64, torch.float64, torch.uint8, torch.bool]))
        elif change == 2 and t.is_floating_point():
            t = t.clone().view(-1)
            t[0] = rng.choice([float("nan"), float("inf")])
            t = t.view(tensors[name].shape)
        elif change == 3:
            t = torch.zeros(())
        elif change == 4:
            del tensors[name]
            return save(tensors, metadata=header)
        else:
            tensors["extra"] = torch.zeros(2)
        tensors[name] = t.contiguous()
    elif kind == 2:  # a crop header that is not a box
        header["crop"] = rng.choice(["null", "[]", "[1, 2, 3, 4]", "garbage", '"str"', "[0, 0, 1, 1, 1]",
                                     "[true, 0, 1, 1]", "[NaN, 0, 1, 1]", "[0.5, 0, 0.5, 1]", "{}", "1e999"])  # fmt: skip
    else:
        header = rng.choice([{}, {"crop": "[0,0,1,1]"}, {"key": "k" * 5000}, {"resolution": "-1"}])
    return save(tensors, metadata=header)


def test_damaged_precomputed_payloads_cost_one_skip_at_most(tmp_path):
    rng = random.Random(f"{SEED}:precomputed")
    cfg = precomputed_cfg(f"{tmp_path}/*.tar", "data.batch_size=1")
    for case in range(CASES["precomputed"]):
        records = [precomputed_sample(cfg, f"g{case}_{i}", i) for i in range(3)]
        x = records[1]
        for member in rng.sample(["safetensors", "txt", "json"], rng.randint(1, 2)):
            if member == "safetensors":
                x[member] = damaged_payload(rng, cfg, x[member])
            else:
                x[member] = bytes_value(rng, x[member])
        write_precomputed(tmp_path, cfg, [records])
        # the payload's header names the sample; a damaged header may name it anything (or fall back)
        result = outcome(cfg)
        assert_contained(result, [f"g{case}_0", f"g{case}_2"], _other_keys(result, [f"g{case}_0", f"g{case}_2"]),
                         records=3)  # fmt: skip


def test_damaged_precomputed_descriptions_are_one_line_or_harmless(tmp_path):
    from data_modules.precomputed import META_FILE, UNCONDITIONAL_FILE

    rng = random.Random(f"{SEED}:description")
    cfg = precomputed_cfg(f"{tmp_path}/*.tar")
    keys = [f"g{i}" for i in range(3)]
    for case in range(CASES["description"]):
        write_precomputed(tmp_path, cfg, [[precomputed_sample(cfg, k, i) for i, k in enumerate(keys)]])
        path = rng.choice([tmp_path / META_FILE, tmp_path / UNCONDITIONAL_FILE,
                           tmp_path / "encode-progress" / "rank00000.json"])  # fmt: skip
        data = path.read_bytes()
        if path.suffix == ".json" and rng.random() < 0.5:  # a field of another type
            doc = json.loads(data)
            doc[rng.choice(sorted(doc))] = other_value(rng)
            data = json.dumps(doc).encode()
        else:
            data = bytes_value(rng, data)
        path.write_bytes(data)
        assert_contained(outcome(cfg), keys, set(), records=3)
