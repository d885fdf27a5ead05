"""`data.format: parquet`: rows with image bytes and a caption column (`data.image_column`, `data.caption_column`,
`data.key_column`), read with pyarrow.

pyarrow directly rather than through `datasets`' parquet streaming (which wraps it): row-group metadata lets a
resumed reader jump to its row without reading what comes before, and only the rows this reader owns are
converted to Python. A record is one row, numbered in file order.

Bounds (data.max_member_bytes, `rows.py`): a row group whose footer declares more uncompressed bytes than the
bound times its row count cannot be made of rows within the bound; its rows are `too_large_member`, unread.
Otherwise a row above the bound is refused before it becomes Python objects. pyarrow decompresses a page
whole, so inside an accepted group what one row costs is bounded by the group's declared size, not per row.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..records import Failure, ReadOptions, Record, Shard, owned, reports_bad_shard
from .base import FileFormat, register_format
from .rows import table_records

PARQUET_BATCH_ROWS = 256  # rows converted to Python at a time (bounds memory inside big row groups)


@register_format
class Parquet(FileFormat):
    name = "parquet"
    suffixes = (".parquet", ".pq")
    columnar = True

    def read_file(self, fileobj, shard: Shard, stride: int, offset: int, start: int,
                  options: ReadOptions) -> Iterator[Record | Failure]:  # fmt: skip
        yield from _rows(fileobj, shard, stride, offset, start, options)


def _rows(fileobj, shard: Shard, stride: int, offset: int, start: int,
          options: ReadOptions) -> Iterator[Record | Failure]:  # fmt: skip
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(fileobj)
        groups = [pf.metadata.row_group(g) for g in range(pf.num_row_groups)]
    except Exception as err:  # noqa: BLE001 - a corrupt footer raises Arrow, OS and value errors alike
        if reports_bad_shard(offset, start):
            yield Failure("bad_shard", -1, shard.url, f"{type(err).__name__}: {err}")
        return
    first = offset + start * stride  # raw index of the first owned row
    limit = options.max_member_bytes
    row0 = 0
    for group, meta in enumerate(groups):
        rows = meta.num_rows
        if row0 + rows <= first:  # resume: jump over whole row groups without reading them
            row0 += rows
            continue
        if meta.total_byte_size > limit * max(rows, 1):
            detail = f"row group {group} declares {meta.total_byte_size} bytes for {rows} rows"
            for i in range(max(row0, first), row0 + rows):
                if owned(i, stride, offset, start):
                    yield Failure("too_large_member", i, shard.url, detail)
            row0 += rows
            continue
        batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group])
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    break
                idx = np.arange(row0, row0 + batch.num_rows)
                keep = np.nonzero((idx % stride == offset) & (idx >= first))[0]
                items = list(table_records(batch.take(keep), idx[keep].tolist(), shard.url, options.key_column,
                                           limit, lambda i: f"{shard.url}:{i}")) if len(keep) else []  # fmt: skip
            except Exception as err:  # noqa: BLE001 - a corrupt page raises Arrow, OS and value errors alike
                # The rest of the file cannot be trusted. Every reader stops at the same row; its owner reports it.
                if owned(row0, stride, offset, start):
                    yield Failure("truncated", row0, shard.url, f"{type(err).__name__}: {err}")
                return
            row0 += batch.num_rows
            yield from items
