"""Shard resolution and the (rank x worker) split: every sample exactly once, any shard count."""

from __future__ import annotations

import itertools

import pytest

from data_modules import ShardStream, StreamSpec, WorkerState, resolve_shards, split_pieces, worker_pieces
from data_modules.formats import resolve_data
from data_modules.split import Piece
from nami.config import ConfigError

from .data_fixtures import data_cfg, read_as_readers, simple_shards
from .hf_fixtures import SOURCES, source_set


def test_patterns_resolve_in_order_without_duplicates(tmp_path):
    for name in ("b.tar", "a.tar", "c.parquet", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "00001.tar").write_bytes(b"x")
    (sub / "00002.tar").write_bytes(b"x")
    shards = resolve_shards([str(tmp_path / "*.tar"), str(tmp_path / "a.tar"), str(tmp_path / "c.parquet")])
    assert [(s.url.rsplit("/", 1)[1], s.format) for s in shards] == [
        ("a.tar", "webdataset"),
        ("b.tar", "webdataset"),
        ("c.parquet", "parquet"),
    ]
    assert [s.url for s in resolve_shards(str(tmp_path))][-1].endswith("c.parquet")  # a directory: its shards
    assert len(resolve_shards(str(sub / "{00001..00002}.tar"))) == 2  # brace ranges, as img2dataset names
    assert len(resolve_shards(f"file://{sub}/*.tar")) == 2  # fsspec URLs
    assert resolve_shards(str(tmp_path / "notes.txt"), "webdataset")[0].format == "webdataset"


@pytest.mark.parametrize(
    "spec, fmt, key, words",
    [
        ("{root}/missing/*.tar", "auto", "data.shards", "missing/*.tar matches no file"),
        ("{root}/none.tar", "auto", "data.shards", "none.tar matches no file"),
        ([], "auto", "data.shards", "nami data synth"),
        ("{root}/notes.txt", "auto", "data.format", "cannot tell the format"),
    ],
)
def test_bad_patterns_name_the_key_and_path(tmp_path, spec, fmt, key, words):
    (tmp_path / "notes.txt").write_bytes(b"x")
    spec = spec.format(root=tmp_path) if isinstance(spec, str) else spec
    with pytest.raises(ConfigError) as err:
        resolve_shards(spec, fmt)
    assert err.value.key == key and words in str(err.value)


@pytest.mark.parametrize("ranks, workers", [(1, 1), (2, 2), (3, 2), (4, 3), (8, 1)])
def test_split_covers_every_record_exactly_once(ranks, workers):
    for shards in range(1, 10):
        owners: dict[tuple[int, int], list] = {}
        per_rank = []
        for rank in range(ranks):
            share = 0.0
            for worker in range(workers):
                pieces = worker_pieces(shards, rank, ranks, worker, workers, epoch=1, seed=5, shuffle=True)
                assert pieces, "every (rank, worker) gets something to read"
                for p in pieces:
                    share += 1 / p.stride
                    for index in range(p.offset, 60, p.stride):
                        owners.setdefault((p.shard, index), []).append((rank, worker))
            per_rank.append(share)
        assert sorted(owners) == sorted(itertools.product(range(shards), range(60)))
        assert all(len(v) == 1 for v in owners.values())
        assert max(per_rank) - min(per_rank) <= 1.0 + 1e-9  # ranks differ by at most one shard's worth


def test_remainder_is_redistributed_by_sample():
    assert split_pieces([Piece(0), Piece(1), Piece(2)], 2, 0) == [Piece(0), Piece(2, 2, 0)]
    assert split_pieces([Piece(0), Piece(1), Piece(2)], 2, 1) == [Piece(1), Piece(2, 2, 1)]
    # a shared piece split again among workers: strides compose
    assert split_pieces([Piece(2, 2, 1)], 2, 1) == [Piece(2, 4, 3)]


@pytest.mark.parametrize("source", SOURCES)
def test_uneven_shards_stream_exactly_once(tmp_path, source):
    """Real shards of unequal sizes read as 2 ranks x 2 workers: the union is the set written, no repeats."""
    spec, options, keys = source_set(tmp_path, source, [5, 9, 2])
    cfg = data_cfg(spec, "data.batch_size=3", *options)
    assert len(resolve_data(cfg.data)) == (1 if source == "hf-imagefolder" else 3)
    seen, _ = read_as_readers(cfg, ranks=2, workers=2)
    assert sorted(seen) == sorted(keys)


def test_fsspec_urls_stream_like_local_files(tmp_path):
    """A non-local filesystem (fsspec's in-memory one) resolves to URLs and streams the same keys."""
    import fsspec

    keys = simple_shards(tmp_path, [3, 2])
    fs = fsspec.filesystem("memory")
    for path in sorted(tmp_path.glob("*.tar")):
        fs.pipe(f"/{tmp_path.name}/{path.name}", path.read_bytes())
    shards = resolve_shards(f"memory://{tmp_path.name}/*.tar")
    assert [s.url.split("://")[0] for s in shards] == ["memory", "memory"]
    spec = StreamSpec.from_config(data_cfg(str(tmp_path / "*.tar")), shards, train=False)
    seen = [k for b in ShardStream(spec).batches(0, 1, WorkerState()) for k in b.all_keys()]
    assert seen == keys
    fs.rm(f"/{tmp_path.name}", recursive=True)
