"""data.format: hf (Hugging Face `datasets`): the reader's contract, every local kind, splits and configs,
exact rows, and one-line errors. Exactly-once, resume and skip counting run in the shared data tests
(test_data_split, test_data_resume, test_data_stream, test_data_cli, test_data_ddp), parametrized over hf."""

from __future__ import annotations

import pytest
import torch

from data_modules import ShardStream, StreamSpec, WorkerState
from data_modules.formats import read_records, resolve_data
from data_modules.records import Record
from nami.config import ConfigError

from .data_fixtures import data_cfg, rgb_png
from .hf_fixtures import HF_KINDS, HF_OPTIONS, hf_bad_set, hf_dataset, write_hf


def _keys(items) -> list[str]:
    return [r.key for r in items if isinstance(r, Record)]


def test_reader_owns_its_residues_from_any_start(tmp_path):
    """read_records(shard, stride, offset, start) on a library shard is the slice [offset::stride][start:] of
    the whole shard, as the kit's split and resume assume (skip + split_dataset_by_node compose this way)."""
    path, _ = hf_dataset(tmp_path, "saved", [7, 7])  # two arrow files
    shards = resolve_data(data_cfg(str(path), *HF_OPTIONS).data)
    assert len(shards) == 2 and {s.format for s in shards} == {"hf"}
    for shard in shards:
        whole = _keys(read_records(shard))
        assert len(whole) == 7 and len(set(whole)) == 7
        for stride in (1, 2, 3):
            for offset in range(stride):
                for start in range(len(whole[offset::stride]) + 1):
                    got = list(read_records(shard, stride, offset, start))
                    assert _keys(got) == whole[offset::stride][start:], (stride, offset, start)
                    assert [r.index for r in got] == list(range(len(whole)))[offset::stride][start:]


def test_ranks_read_what_split_dataset_by_node_assigns_when_shards_divide(tmp_path):
    """Where the library's own rank split fits (shards % ranks == 0), each rank reads exactly the rows
    `split_dataset_by_node` gives it; the kit's split only differs where that one would read every shard."""
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    path, _ = hf_dataset(tmp_path, "parquet", [3, 5, 2, 4])
    cfg = data_cfg(str(path), *HF_OPTIONS, "data.batch_size=2")
    library = load_dataset(str(path), split="train", streaming=True)
    for rank in range(2):
        kit = [k for w in range(2) for b in _stream(cfg, rank, 2, w, 2) for k in b.all_keys()]
        assert sorted(kit) == sorted(r["key"] for r in split_dataset_by_node(library, rank, 2))


def _stream(cfg, rank=0, world=1, worker=0, workers=1):
    spec = StreamSpec.from_config(cfg, resolve_data(cfg.data), rank, world, train=False)
    return list(ShardStream(spec).batches(worker, workers, WorkerState()))


@pytest.mark.parametrize("kind", HF_KINDS)
def test_more_readers_than_shards_read_each_row_once(tmp_path, kind):
    """3 ranks x 2 workers over 2 library shards (imagefolder: 1): the kit's split shares them by stride."""
    path, keys = hf_dataset(tmp_path, kind, [5, 4])
    cfg = data_cfg(str(path), *HF_OPTIONS, "data.batch_size=2")
    assert len(resolve_data(cfg.data)) == (1 if kind == "imagefolder" else 2)
    seen = [k for r in range(3) for w in range(2) for b in _stream(cfg, r, 3, w, 2) for k in b.all_keys()]
    assert sorted(seen) == sorted(keys)


def test_rows_images_and_metadata_are_exact(tmp_path):
    """Images read from imagefolder paths equal the same bytes stored in a parquet dataset; metadata is the
    row without its image, floats to the last digit; rows without data.key_column are named by shard:row."""
    path, expected = hf_bad_set(tmp_path)
    cfg = data_cfg(str(path), *HF_OPTIONS, "data.min_size=16", "data.max_pixels=250000", "data.batch_size=4")
    got = {}
    for batch in _stream(cfg):
        for key, caption, meta, image in zip(
            batch.keys[0], batch.captions[0], batch.metadata[0], batch.images[0]
        ):
            got[key] = (caption, meta, image)
    assert {k: v[1] for k, v in got.items()} == expected
    assert got["mode_rgb_jpg"][1]["boxes"][0] == [0.1234567890123456789, 1e-300, 2.5e300]
    assert got["mode_l_png"][0] == "mode l.png"

    rows = [{"caption": f"row {i}", "image": rgb_png(60 + i)} for i in range(3)]  # no key column
    parquet = write_hf(tmp_path / "pq", "parquet", [rows])
    folder = write_hf(
        tmp_path / "folder", "imagefolder", [[{**r, "key": f"f{i}"} for i, r in enumerate(rows)]]
    )
    by_bytes = _stream(data_cfg(str(parquet), *HF_OPTIONS, "data.batch_size=3"))[0]
    by_path = _stream(data_cfg(str(folder), *HF_OPTIONS, "data.batch_size=3"))[0]
    assert by_bytes.keys[0] == [f"{parquet}#train-00000-of-00001:{i}" for i in range(3)]
    assert by_path.keys[0] == ["f0", "f1", "f2"] and by_path.captions[0] == by_bytes.captions[0]
    assert torch.equal(by_path.images[0], by_bytes.images[0])


def test_split_and_config_name_select_the_rows(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = {
        s: [{"key": f"{s}{i}", "caption": "c", "image": rgb_png(i)} for i in range(n)]
        for s, n in [("a", 3), ("b", 2)]
    }
    saved = tmp_path / "dict"
    DatasetDict({"train": Dataset.from_list(rows["a"]), "test": Dataset.from_list(rows["b"])}).save_to_disk(
        saved
    )
    test = data_cfg(str(saved), *HF_OPTIONS, "data.hf_split=test", "data.batch_size=8")
    assert _stream(test)[0].all_keys() == ["b0", "b1"]
    with pytest.raises(ConfigError) as err:
        resolve_data(data_cfg(str(saved), *HF_OPTIONS, "data.hf_split=validation").data)
    assert err.value.key == "data.hf_split" and "train, test" in str(err.value)

    repo = tmp_path / "repo"  # a dataset folder whose README declares two configurations
    for name in ("a", "b"):
        write_hf(repo / name, "parquet", [rows[name]])
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: first\n  data_files: a/*.parquet\n"
        "- config_name: second\n  data_files: b/*.parquet\n---\n"
    )
    second = data_cfg(str(repo), *HF_OPTIONS, "data.hf_name=second", "data.batch_size=8")
    assert _stream(second)[0].all_keys() == ["b0", "b1"]


@pytest.mark.parametrize(
    "make, overrides, key, words",
    [
        (lambda root: root / "nowhere", [], "data.shards", "nowhere"),
        (
            lambda root: "nami-kit-tests/no-such-dataset",
            [],
            "data.shards",
            "no-such-dataset",
        ),  # hub id, offline
        (
            lambda root: hf_dataset(root, "parquet", [2])[0],
            ["data.image_column=jpg"],
            "data.image_column",
            "'jpg'",
        ),
        (
            lambda root: hf_dataset(root, "saved", [2])[0],
            ["data.caption_column=txt"],
            "data.caption_column",
            "key",
        ),
        (lambda root: hf_dataset(root, "parquet", [2])[0], ["data.hf_name=large"], "data.hf_name", "'large'"),
    ],
)
def test_bad_datasets_are_one_error_naming_the_key(tmp_path, make, overrides, key, words):
    with pytest.raises(ConfigError) as err:
        resolve_data(data_cfg(str(make(tmp_path)), *HF_OPTIONS, *overrides).data)
    assert err.value.key == key and words in str(err.value) and "\n" not in str(err.value)


def test_check_on_a_missing_dataset_is_one_line_and_exit_2(tmp_path, capsys):
    from nami.cli import main

    from .data_fixtures import LEARNED_TEXT, TINY

    code = main(
        ["data", "check", str(TINY), *LEARNED_TEXT, f"data.shards={tmp_path / 'nowhere'}", *HF_OPTIONS]
    )
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "data.shards" in err and "nowhere" in err
