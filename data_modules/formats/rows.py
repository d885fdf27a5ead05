"""Rows of Arrow tables (parquet, hf) as records, with the per-record bound of data.max_member_bytes applied
before a row becomes Python objects: a row whose binary and string values together hold more bytes than the
bound is a `too_large_member` failure in its place, measured from the Arrow buffers (no copy)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..records import Failure, Record

MAX_TYPE_DEPTH = 32  # columns nested deeper are not measured (the row is still converted and decoded)


def row_bytes(table) -> np.ndarray:
    """Bytes each row of an Arrow table or record batch holds in binary / string values, at any nesting
    (struct fields, list items) down to MAX_TYPE_DEPTH."""
    total = np.zeros(table.num_rows, dtype=np.int64)
    for column in table.columns:
        chunks = column.chunks if hasattr(column, "chunks") else [column]
        start = 0
        for chunk in chunks:
            total[start : start + len(chunk)] += _array_bytes(chunk, 0)
            start += len(chunk)
    return total


def _array_bytes(array, depth: int) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    t = array.type
    if depth > MAX_TYPE_DEPTH:
        return np.zeros(len(array), dtype=np.int64)
    if pa.types.is_binary(t) or pa.types.is_string(t) or pa.types.is_large_binary(t) or pa.types.is_large_string(t):
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_struct(t):
        out = np.zeros(len(array), dtype=np.int64)
        for child in array.flatten():
            out += _array_bytes(child, depth + 1)
        return out
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        items = _array_bytes(pc.list_flatten(array), depth + 1)
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=items, minlength=len(array)).astype(np.int64)
    return np.zeros(len(array), dtype=np.int64)


def table_records(table, indices: list[int], shard: str, key_column: str, limit: int,
                  fallback_key) -> Iterator[Record | Failure]:  # fmt: skip
    """The rows of `table` (numbered `indices`) as records, a row above `limit` bytes as a failure; a row's
    key is its `key_column` value, else `fallback_key(index)`."""
    sizes = row_bytes(table)
    small = np.nonzero(sizes <= limit)[0]
    kept = table.take(small) if len(small) < table.num_rows else table
    try:
        rows = kept.to_pylist()
    except Exception:  # noqa: BLE001 - a value Python cannot hold (nesting, dates out of range): find which
        rows = [_one_row(kept, i) for i in range(kept.num_rows)]
    rows.reverse()
    for i, index in enumerate(indices):
        if sizes[i] > limit:
            yield Failure("too_large_member", index, shard, f"row of {sizes[i]} bytes > data.max_member_bytes")
            continue
        row = rows.pop()
        if isinstance(row, Exception):
            yield Failure("undecodable", index, shard, f"{type(row).__name__}: {row}")
            continue
        value = row.get(key_column)
        yield Record(str(value) if value is not None else fallback_key(index), index, shard, row)


def _one_row(table, i: int) -> dict | Exception:
    try:
        return table.slice(i, 1).to_pylist()[0]
    except Exception as err:  # noqa: BLE001 - reported as this row's failure
        return err
