"""Where scored rows go. ``open_target`` picks the implementation from the output's URL."""

from __future__ import annotations

from .base import FragmentRecord, OutputFile, Target
from .folder import (
    MANIFEST,
    STAGING,
    SUCCESS,
    FolderTarget,
    check_partition_values,
    dictionary_columns,
    earlier_dated_manifest,
    is_reject_file,
    open_target,
    own_prefix,
)

__all__ = [
    "MANIFEST",
    "STAGING",
    "SUCCESS",
    "FolderTarget",
    "FragmentRecord",
    "OutputFile",
    "Target",
    "check_partition_values",
    "dictionary_columns",
    "earlier_dated_manifest",
    "is_reject_file",
    "open_target",
    "own_prefix",
]
