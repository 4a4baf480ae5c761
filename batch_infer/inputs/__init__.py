"""Where scored rows come from. ``plan_input`` picks the input from its URL: a Parquet folder,
file or glob today."""

from __future__ import annotations

from ..config import InputConfig
from .base import Fragment, InputFile, InputPlan
from .folder import has_magic, lossless, plan_folder, read_fragment

__all__ = [
    "Fragment",
    "InputFile",
    "InputPlan",
    "has_magic",
    "lossless",
    "plan_input",
    "read_fragment",
]


def plan_input(config: InputConfig) -> InputPlan:
    """Plan every fragment of the input and read the footers, before anything is scored."""
    return plan_folder(config)
