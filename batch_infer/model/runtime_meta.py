"""What a compiled runtime's saved metadata says, read the same way by every runtime.

Its own module so that ``runtimes`` (which dispatches to ``trees``) and ``trees`` share it
without importing each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def saved_classes(meta: dict[str, Any]) -> np.ndarray | None:
    """The labels, from the runtime's metadata (JSON: strings, numbers or booleans)."""
    return np.asarray(meta["classes"]) if meta.get("classes") is not None else None
