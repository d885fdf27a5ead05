"""Data formats are a registry: a format defined and registered here, in the test file alone (a folder of image
files with sidecar `.txt` captions), is a valid `data.format`, streams every sample exactly once over ranks x
workers with its skips counted once, and passes `nami data check`; `auto` picks formats by registered suffix."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from data_modules import Record, Shard, register_format, resolve_shards
from data_modules.check import check_data
from data_modules.records import Failure, owned, reports_bad_shard
from data_modules.sources import shard_patterns
from nami.config import ConfigError
from nami.registry import DATA_FORMATS

from .data_fixtures import data_cfg, read_as_readers, rgb_png

IMAGE_SUFFIXES = (".png", ".jpg")


@register_format
class SidecarFolder:
    """Each shard is a folder; a record is an image file plus, when there is one, the `.txt` of the same name."""

    name = "test_sidecar_folder"
    suffixes = ()
    columnar = False

    def resolve(self, spec, data) -> list[Shard]:
        folders = [Path(p) for p in shard_patterns(spec)]
        for folder in folders:
            if not folder.is_dir():
                raise ConfigError("data.shards", f"{folder} is not a folder")
        return [Shard(str(folder), self.name) for folder in folders]

    def read(self, shard: Shard, stride: int = 1, offset: int = 0, start: int = 0, options=None):
        try:
            images = sorted(p for p in Path(shard.url).iterdir() if p.suffix in IMAGE_SUFFIXES)
        except OSError as err:
            if reports_bad_shard(offset, start):
                yield Failure("bad_shard", -1, shard.url, str(err))
            return
        for index, path in enumerate(images):
            if owned(index, stride, offset, start):  # others' files are never opened
                caption = path.with_suffix(".txt")
                fields = {path.suffix[1:]: path.read_bytes()}
                if caption.exists():
                    fields["txt"] = caption.read_bytes()
                yield Record(path.stem, index, shard.url, fields)


def sidecar_folders(root: Path, sizes: list[int]) -> tuple[list[str], list[str]]:
    """Folders of captioned PNGs (plus one image without a caption in the first); (folders, captioned keys)."""
    folders, keys = [], []
    for f, n in enumerate(sizes):
        folder = root / f"folder{f}"
        folder.mkdir()
        for i in range(n):
            key = f"f{f}_{i:03d}"
            (folder / f"{key}.png").write_bytes(rgb_png(f * 100 + i))
            (folder / f"{key}.txt").write_text(f"a caption for {key}")
            keys.append(key)
        folders.append(str(folder))
    (Path(folders[0]) / "f0_uncaptioned.png").write_bytes(rgb_png(999))
    return folders, keys


def test_the_registered_format_is_a_config_value():
    assert SidecarFolder.name in DATA_FORMATS.names()
    with pytest.raises(ConfigError) as err:
        data_cfg("unused", "data.format=no_such_format")
    assert err.value.key == "data.format" and SidecarFolder.name in str(err.value)  # the choices: the registry


@pytest.mark.parametrize("ranks, workers", [(1, 1), (2, 2), (3, 2)])
def test_a_format_registered_by_a_test_streams_exactly_once(tmp_path, ranks, workers):
    folders, keys = sidecar_folders(tmp_path, [5, 3, 2])
    cfg = data_cfg(folders, f"data.format={SidecarFolder.name}", "data.batch_size=2", "data.shuffle_buffer=0")
    seen, skipped = read_as_readers(cfg, ranks, workers)
    assert sorted(seen) == sorted(keys)  # every sample, none twice (3 shards over up to 6 readers: shared ones)
    assert skipped == Counter(no_caption=1)  # the uncaptioned image: skipped, counted by one reader


def test_nami_data_check_reads_the_format_with_worker_processes(tmp_path):
    folders, keys = sidecar_folders(tmp_path, [4, 3])
    cfg = data_cfg(folders, f"data.format={SidecarFolder.name}", "data.batch_size=2", "data.num_workers=2")
    report = check_data(cfg, world_size=2)
    assert report["samples"] == report["unique"] == len(keys) and report["duplicates"] == 0
    assert report["skipped"] == {"no_caption": 1}


def test_a_bad_input_of_the_format_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        resolve_shards(str(tmp_path / "missing"), SidecarFolder.name)
    assert err.value.key == "data.shards" and "is not a folder" in str(err.value)


def test_auto_picks_each_file_by_a_registered_suffix(tmp_path):
    for name in ("a.tar", "b.tgz", "c.parquet", "d.pq", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    shards = resolve_shards(str(tmp_path))  # a directory: the files some format recognises, nothing else
    by_suffix = {n: f for f in DATA_FORMATS.names() for n in DATA_FORMATS[f].suffixes}
    assert [(Path(s.url).name, s.format) for s in shards] == [
        (n, by_suffix[Path(n).suffix]) for n in ("a.tar", "b.tgz", "c.parquet", "d.pq")
    ]
