"""A true LRU cache of rows' outputs, keyed by the model's sha256 and the row's feature values.

Floats are keyed by their bits (``-0.0`` and ``0.0`` differ, every NaN payload is its own key),
and each value by its Arrow type, so a hit returns exactly what scoring that row would return.
Used from the event loop only: no locking.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np
import pyarrow as pa


class LRUCache:
    """The ``capacity`` most recently used keys; a lookup counts as a use."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


def row_keys(batch: pa.RecordBatch, features: list[str], model_sha256: str) -> list[Hashable]:
    """One key per row: the model, the features' types, and their values (floats as bits)."""
    columns = []
    types = []
    for name in features:
        column = batch.column(name)
        types.append(str(column.type))
        if pa.types.is_floating(column.type):
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)
            bits = values.view(np.int64).tolist()
            nulls = column.is_null().to_pylist() if column.null_count else None
            columns.append(
                bits
                if nulls is None
                else [None if n else b for b, n in zip(bits, nulls, strict=True)]
            )
        else:
            columns.append(column.to_pylist())
    prefix = (model_sha256, tuple(types))
    return [(prefix, row) for row in zip(*columns, strict=True)]
