"""One hostile sample costs one counted skip, never the run (issue 23, data items 1-5): members that expand far
beyond their files are refused unread (under an address-space limit, not by trusting the cap), deep json and
wrongly typed columns are counted, captions are cut before any tokenizer sees them, and tampered precomputed
shards are skipped per payload, or refused in one line naming the damaged description file."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from data_modules.check import check_data
from data_modules.metadata import MAX_CAPTION_BYTES
from nami.config import ConfigError

from .data_fixtures import LEARNED_TEXT, TINY, data_cfg, flow_mix, good, rgb_png, write_tar
from .hostile_fixtures import (MiB, ZERO_BLOCKS, check_under_limit, deep_json, embedding, gzip_bomb_tar, member,
                               precomputed_cfg, precomputed_sample, sample_members, sparse_member,
                               write_precomputed)  # fmt: skip
from .hf_fixtures import write_hf
from .safety_fixtures import cli, one_error_line


# ---- 1. members that expand far beyond their files ----------------------------------------------------
def test_members_and_rows_that_expand_to_gigabytes_are_skipped_unread_under_a_memory_limit(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sparse = tmp_path / "sparse.tar"
    sparse.write_bytes(sample_members(good("a0", 1)) + sparse_member("s.png", rgb_png(2), 1_500_000_000)
                       + member("s.txt", b"a sparse image") + sample_members(good("a1", 3)) + ZERO_BLOCKS)  # fmt: skip
    bomb = gzip_bomb_tar(tmp_path / "bomb.tar.gz", [good("b0", 4)], "z.png", 320 * MiB,
                         [{"__key__": "z", "txt": b"a caption"}, good("b1", 5)])  # fmt: skip
    # one parquet row of 300 MiB of zeros: its row group declares more than the bound allows per row
    zeros = pa.array([np.zeros(300 * MiB, np.uint8).tobytes()], pa.large_binary())
    pq.write_table(pa.table({"key": ["big"], "caption": ["c"], "image": zeros}), tmp_path / "rows.parquet",
                   compression="brotli", compression_level=1)  # fmt: skip
    del zeros
    pq.write_table(pa.Table.from_pylist([{"key": "c0", "caption": "c", "image": rgb_png(6)}]), tmp_path / "c.parquet")
    sizes = [p.stat().st_size for p in (sparse, bomb, tmp_path / "rows.parquet")]
    assert max(sizes) < 2 * MiB, sizes  # files of KB; members and rows of hundreds of MB
    keys = tmp_path / "keys.txt"
    shards = f"data.shards=[{sparse},{bomb},{tmp_path}/rows.parquet,{tmp_path}/c.parquet]"
    # 256 MiB of address space beyond the imports: reading any of the three whole fails with MemoryError.
    result = check_under_limit(256 * MiB, keys, *LEARNED_TEXT, shards, "data.num_workers=0")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["skipped"] == {"sparse_member": 1, "too_large_member": 2}, result.stderr[-3000:]  # sparse: never "good"
    assert sorted(keys.read_text().split()) == ["a0", "a1", "b0", "b1", "c0"]


def test_the_member_bound_is_a_config_key_checked_per_record(tmp_path):
    image = rgb_png(7)
    shard = write_tar(tmp_path / "s.tar", [good("small", 1), {"__key__": "big", "png": image, "txt": b"x" * 100}])
    small = len(rgb_png(1)) + len(b"caption small")
    limit = f"data.max_member_bytes={max(small, len(image)) + 50}"  # each member fits, the big record does not
    report = check_data(data_cfg(str(shard), "data.num_workers=0", limit))
    assert report["samples"] == 1 and report["skipped"] == {"too_large_member": 1}
    assert check_data(data_cfg(str(shard), "data.num_workers=0"))["samples"] == 2  # the default: 64 MiB
    with pytest.raises(ConfigError) as err:
        data_cfg(str(shard), "data.max_member_bytes=0")
    assert err.value.key == "data.max_member_bytes"


def test_parquet_and_hf_rows_above_the_bound_are_skipped_before_they_are_python_objects(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    # a row over the bound in a group whose average is within it (and an hf row) is refused before to_pylist
    rows = [{"key": f"small{i}", "caption": "c", "image": rgb_png(i)} for i in range(10)]
    rows.append({"key": "large", "caption": "c", "image": rgb_png(2) * 40})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mixed.parquet")
    Dataset.from_list(rows).save_to_disk(tmp_path / "hf")
    write_hf(tmp_path / "folder", "imagefolder", [rows])  # images read by path: read up to the bound
    limit = f"data.max_member_bytes={len(rgb_png(2)) * 10}"
    for source in ([str(tmp_path / "mixed.parquet")], [str(tmp_path / "hf"), "data.format=hf"],
                   [str(tmp_path / "folder"), "data.format=hf"]):  # fmt: skip
        report = check_data(data_cfg(source[0], "data.num_workers=0", limit, *source[1:]))
        assert report["samples"] == 10 and report["skipped"] == {"too_large_member": 1}


# ---- 2. json nested 100,000 deep ----------------------------------------------------------------------
def test_deeply_nested_json_is_a_counted_repair_not_a_traceback(tmp_path, capsys):
    shard = write_tar(tmp_path / "deep.tar", [
        {**good("deep", 1), "json": deep_json(100_000)},  # RecursionError in json.loads
        {**good("nested", 2), "json": deep_json(500)},  # parses, but too deep to pickle and re-serialise safely
        good("plain", 3, {"caption": "fine", "n": [[1]]}),
    ])  # fmt: skip
    code, out, err = cli(capsys, "data", "check", TINY, *LEARNED_TEXT, f"data.shards={shard}", "--json",
                         "data.num_workers=0")  # fmt: skip
    assert code == 0 and "Traceback" not in err, err
    report = json.loads(out)
    assert report["samples"] == 3 and report["repaired"] == {"bad_json": 2} and report["skipped"] == {}


# ---- 3. wrongly typed columns -------------------------------------------------------------------------
def test_wrongly_typed_parquet_image_columns_are_counted_skips(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good_row = {"key": "ok", "caption": "fine", "image": rgb_png(1)}
    pq.write_table(pa.Table.from_pylist([good_row]), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist([{"key": "int", "caption": "c", "image": 5}]), tmp_path / "b.parquet")
    pq.write_table(pa.Table.from_pylist([{"key": "struct", "caption": "c", "image": {"bytes": 7, "path": "x"}}]),
                   tmp_path / "c.parquet")  # fmt: skip
    pq.write_table(pa.Table.from_pylist([{"key": "list", "caption": "c", "image": [1, 2]}]), tmp_path / "d.parquet")
    report = check_data(data_cfg(f"{tmp_path}/*.parquet", "data.num_workers=0"))
    assert report["samples"] == 1 and report["skipped"] == {"undecodable": 3}


def test_wrongly_typed_hf_image_columns_are_counted_skips(tmp_path):
    from datasets import Dataset

    rows = {"int": [{"key": "int", "caption": "c", "image": 5}],
            "bytes": [{"key": "bytes", "caption": "c", "image": {"bytes": 7, "path": None}}],
            "path": [{"key": "path", "caption": "c", "image": {"bytes": None, "path": 7}}],
            "good": [{"key": "good", "caption": "c", "image": rgb_png(1)}]}  # fmt: skip
    for name, data in rows.items():
        Dataset.from_list(data).save_to_disk(tmp_path / name)
    shards = "[" + ",".join(str(tmp_path / n) for n in rows) + "]"
    report = check_data(data_cfg(shards, "data.format=hf", "data.num_workers=0"))
    assert report["samples"] == 1
    assert report["skipped"] == {"undecodable": 2, "missing_image": 1}  # a path that is no path: no image


# ---- 4. captions are cut before anything tokenises them -----------------------------------------------
def test_huge_captions_are_cut_on_a_character_boundary_before_tokenising(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_modules import ShardDataModule

    huge = "é" * (10 * MiB)  # 20 MB of UTF-8, two bytes a character: the cut falls inside one if not moved
    odd = "a" + huge  # the same, one byte off
    write_tar(tmp_path / "a.tar", [{"__key__": "t0", "png": rgb_png(1), "txt": huge.encode()},
                                   {"__key__": "t1", "png": rgb_png(2), "txt": odd.encode()}])  # fmt: skip
    pq.write_table(pa.Table.from_pylist([{"key": "p0", "caption": huge, "image": rgb_png(3)},
                                         {"key": "p1", "caption": "\ud800 lone surrogate".encode("utf-8", "surrogatepass"),
                                          "image": rgb_png(4)}]), tmp_path / "b.parquet")  # fmt: skip
    cfg = data_cfg(f"[{tmp_path}/a.tar,{tmp_path}/b.parquet]", "data.num_workers=0", "data.batch_size=4")
    batch = next(iter(ShardDataModule(cfg).eval_dataloader()))
    captions = dict(zip(batch.all_keys(), (c for group in batch.captions for c in group)))
    for key in ("t0", "t1", "p0"):
        data = captions[key].encode("utf-8")  # strict: a cut inside a character would not encode back
        assert MAX_CAPTION_BYTES - 3 <= len(data) <= MAX_CAPTION_BYTES and set(captions[key]) <= {"a", "é"}
    assert captions["p1"].encode("utf-8")  # replaced, encodable
    assert Counter(batch.state["repaired"]) == {"caption_truncated": 3, "caption_not_utf8": 1}


# ---- 5. tampered precomputed shards -------------------------------------------------------------------
def _tampered(cfg, key: str, how: str, seed: int = 0) -> dict:
    """A precomputed record of `key` damaged as `how` says."""
    import torch
    from safetensors.torch import load, save

    sample = precomputed_sample(cfg, key, seed)
    tensors = load(sample["safetensors"])
    header = {"key": key, "resolution": str(cfg.resolution), "crop": "[0.0, 0.0, 1.0, 1.0]"}
    if how == "latent_shape":
        tensors["latent"] = tensors["latent"][:, :-1].contiguous()
    elif how == "states_shape":
        tensors["text_states"] = torch.cat([tensors["text_states"]] * 2)
    elif how == "mask_dtype":
        tensors["text_mask"] = tensors["text_mask"].long()
    elif how == "nan":
        tensors["text_pooled"][0] = float("nan")
    elif how == "missing":
        del tensors["text_pooled"]
    elif how == "crop_box":
        header["crop"] = "[0.5, 0.0, 0.2, 1.0]"
    elif how == "crop_text":
        header["crop"] = "{not json"
    elif how == "bytes":
        return {**sample, "__key__": key, "safetensors": sample["safetensors"][:40] + b"\xff" * 20}
    return {**sample, "__key__": key, "safetensors": save(tensors, metadata=header)}


PAYLOAD_DAMAGE = ("latent_shape", "states_shape", "mask_dtype", "nan", "missing", "crop_box", "crop_text")


def test_tampered_payloads_are_counted_skips_and_the_batches_around_them_are_whole(tmp_path):
    from data_modules import ShardDataModule

    cfg = precomputed_cfg(f"{tmp_path}/*.tar")
    records = [{"__key__": "g0", **precomputed_sample(cfg, "g0", 0)}]
    for i, how in enumerate(PAYLOAD_DAMAGE):
        records.append(_tampered(cfg, f"bad_{how}", how, seed=100 + i))
        records.append({"__key__": f"g{i + 1}", **precomputed_sample(cfg, f"g{i + 1}", i + 1)})
    records.append(_tampered(cfg, "bad_bytes", "bytes"))
    write_precomputed(tmp_path, cfg, [records])
    report = check_data(cfg)
    assert report["skipped"] == {"bad_payload": len(PAYLOAD_DAMAGE), "undecodable": 1}
    assert report["samples"] == len(PAYLOAD_DAMAGE) + 1
    loader = ShardDataModule(cfg, mix=flow_mix(cfg)).train_dataloader()  # joint groups, stacked: one shape each
    batches = [batch for batch, _ in zip(loader, range(len(PAYLOAD_DAMAGE)))]
    assert all(b.latents and sum(len(k) for k in b.keys) == cfg.data.batch_size for b in batches)
    assert not any(k.startswith("bad") for b in batches for k in b.all_keys())


def _damage(root, name: str):
    """Damage one description file of a precomputed directory; returns the file's name as errors name it."""
    from data_modules.precomputed import META_FILE, UNCONDITIONAL_FILE

    progress = root / "encode-progress" / "rank00000.json"
    meta = root / META_FILE
    if name == "meta_garbage":
        meta.write_bytes(b"\x00{ not json")
    elif name == "meta_incomplete":
        meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "encoder"}))
    elif name == "meta_world_size":
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "world_size": "two"}))
    elif name == "meta_deep":
        meta.write_bytes(deep_json(100_000))
    elif name == "unconditional_garbage":
        (root / UNCONDITIONAL_FILE).write_bytes(b"garbage" * 10)
    elif name == "unconditional_shape":  # the empty prompt's states 5 wide, the config's 8
        import torch

        from data_modules.precomputed import payload

        other = precomputed_cfg("x", "text_encoder.dim=5")
        (root / UNCONDITIONAL_FILE).write_bytes(payload(torch.zeros(0), embedding(other, 0, (1,)), "", 32, None))
    elif name == "progress_garbage":
        progress.write_bytes(b"\xff\xfe garbage")
    elif name == "progress_fields":
        progress.write_text(json.dumps({"done": True, "shards": "all"}))
    return {"meta": META_FILE, "unconditional": UNCONDITIONAL_FILE, "progress": "rank00000.json"}[name.split("_")[0]]


DESCRIPTION_DAMAGE = ("meta_garbage", "meta_incomplete", "meta_world_size", "meta_deep", "unconditional_garbage",
                      "unconditional_shape", "progress_garbage", "progress_fields")  # fmt: skip


@pytest.mark.parametrize("damage", DESCRIPTION_DAMAGE)
def test_a_damaged_shard_set_description_is_one_line_naming_the_file(tmp_path, capsys, damage):
    cfg = precomputed_cfg(f"{tmp_path}/*.tar")
    write_precomputed(tmp_path, cfg, [[{"__key__": "g0", **precomputed_sample(cfg, "g0", 0)}]])
    name = _damage(tmp_path, damage)
    code, _, err = cli(capsys, "data", "check", TINY, "text_encoder.kind=hf", "text_encoder.path=never-built",
                       "text_encoder.dim=8", "text_encoder.pooled_dim=6", "text_encoder.max_length=4",
                       "data.precomputed=true", f"data.shards={tmp_path}/*.tar")  # fmt: skip
    assert code == 2
    assert name in one_error_line(err)


@pytest.mark.parametrize("damage", ["meta_garbage", "meta_incomplete", "progress_garbage", "progress_fields"])
def test_resuming_an_encode_over_a_damaged_description_is_one_line_naming_it(tmp_path, damage):
    from data_modules.encode import encode_shards

    from .data_fixtures import simple_shards

    (tmp_path / "src").mkdir()
    simple_shards(tmp_path / "src", [3])
    cfg = precomputed_cfg(f"{tmp_path}/src/*.tar", "data.precomputed=false")
    out = write_precomputed(tmp_path / "out", cfg, [[]], sources=cfg.data.shards)
    name = _damage(out, damage)

    def never():
        raise AssertionError("encoders built before the directory was checked")

    with pytest.raises(ConfigError) as err:
        encode_shards(cfg, out, never)
    assert err.value.key == "--out" and name in str(err.value) and "\n" not in str(err.value)


# ---- the rule: only the web's image decoders see crawled bytes ------------------------------------------
def test_only_web_image_formats_are_decoded_and_eps_never_reaches_ghostscript(monkeypatch):
    import io

    from PIL import EpsImagePlugin, Image

    from data_modules.decode import image_tensor
    from data_modules.records import Skip

    loaded = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "load", lambda self: loaded.append(self) or None)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 40\nshowpage\n"
    pcx = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 20, 30)).save(pcx, "PCX")
    for data in (eps, pcx.getvalue()):
        with pytest.raises(Skip) as skip:
            image_tensor(data, 32)
        assert skip.value.reason == "undecodable"
    assert not loaded
    assert image_tensor(rgb_png(1), 32).shape == (3, 32, 32)
