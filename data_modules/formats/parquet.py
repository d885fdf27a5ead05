"""`data.format: parquet`: rows with image bytes and a caption column (`data.image_column`, `data.caption_column`,
`data.key_column`), read with pyarrow.

pyarrow directly rather than through `datasets`' parquet streaming (which wraps it): row-group metadata lets a
resumed reader jump to its row without reading what comes before, and only the rows this reader owns are
converted to Python. A record is one row, numbered in file order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..records import Failure, Record, Shard, owned, reports_bad_shard
from .base import FileFormat, register_format

PARQUET_BATCH_ROWS = 256  # rows converted to Python at a time (bounds memory inside big row groups)


@register_format
class Parquet(FileFormat):
    name = "parquet"
    suffixes = (".parquet", ".pq")
    columnar = True

    def read_file(self, fileobj, shard: Shard, stride: int, offset: int, start: int,
                  key_column: str) -> Iterator[Record | Failure]:  # fmt: skip
        yield from _rows(fileobj, shard, stride, offset, start, key_column)


def _rows(fileobj, shard: Shard, stride: int, offset: int, start: int,
          key_column: str) -> Iterator[Record | Failure]:  # fmt: skip
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(fileobj)
    except (pa.ArrowException, OSError) as err:
        if reports_bad_shard(offset, start):
            yield Failure("bad_shard", -1, shard.url, str(err))
        return
    first = offset + start * stride  # raw index of the first owned row
    row0 = 0
    for group in range(pf.num_row_groups):
        rows = pf.metadata.row_group(group).num_rows
        if row0 + rows <= first:  # resume: jump over whole row groups without reading them
            row0 += rows
            continue
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
                idx = np.arange(row0, row0 + batch.num_rows)
                keep = np.nonzero((idx % stride == offset) & (idx >= first))[0]
                row0 += batch.num_rows
                if not len(keep):
                    continue
                for i, row in zip(idx[keep].tolist(), batch.take(keep).to_pylist()):
                    value = row.get(key_column)
                    key = str(value) if value is not None else f"{shard.url}:{i}"
                    yield Record(key, i, shard.url, row)
        except (pa.ArrowException, OSError) as err:
            # A corrupt page: the rest of the file cannot be trusted. Every reader stops at the same row;
            # its owner reports it, once.
            if owned(row0, stride, offset, start):
                yield Failure("truncated", row0, shard.url, str(err))
            return
