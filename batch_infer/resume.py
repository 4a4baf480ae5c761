"""Resume an interrupted run with the same run key, or start a new one.

Staged work of another run key (other inputs, model or config) is discarded, or with
``--resume`` refused, saying what changed."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from .errors import (
    ConfigError,
)
from .planning import PreparedRun
from .targets import (
    OutputFile,
)

log = logging.getLogger(__name__)


def resume_or_start(prepared: PreparedRun) -> tuple[dict[str, Any], dict[str, list[OutputFile]]]:
    """Pick up an interrupted run with the same staging key, or start a new one.

    The staging key hashes the inputs (sizes and versions), the model and the config, so a
    matching folder holds output this run would write byte for byte: resuming it is safe and is
    the default. Folders of runs whose inputs, model or config differ are discarded (``--resume``
    refuses instead, saying what changed).
    """
    config, target = prepared.config, prepared.target
    record = target.read_run_record()
    others = {key: target.read_run_record(key) for key in target.other_stagings()}
    if config.resume is True and record is None:
        if others:
            key, other = next(iter(others.items()))
            changes = what_changed((other or {}).get("fingerprint", {}), prepared.fingerprint)
            raise ConfigError(
                f"cannot resume run {(other or {}).get('run_id', key)}: {'; '.join(changes)}",
                "rerun without --resume to start over with the new inputs, model or config",
            )
        # killed before anything was staged (or never started): nothing to match, so start;
        # an Airflow retry configured with --resume must not fail forever
        log.info("nothing staged to resume in %s: starting the run", target.url)
    # A discarded run may have been mid-commit: its moved files are batch-infer's, and the
    # manifest it meant to write is the last word on what the output holds (the old one is
    # already gone). This run's record inherits both before the folder goes.
    discarded = list(others)
    if config.resume is False and record is not None:
        discarded.append(target.staging_key)
    inherited = sorted({p for key in discarded for p in target.files_of_pending_commit(key)})
    pending = [m for key in discarded if (m := target.pending_manifest(key)) is not None]
    inherited_manifest = pending[-1] if pending else None
    if config.resume is False and record is not None:
        target.discard_staging()
        record = None
    for key, other in others.items():
        changes = what_changed((other or {}).get("fingerprint", {}), prepared.fingerprint)
        log.warning(
            "discarding interrupted run %s, not resumable: %s",
            (other or {}).get("run_id", key),
            "; ".join(changes),
        )
        target.discard_staging(key)
    if record is None:
        record = {
            "run_id": new_run_id(),
            "predicted_at": prepared.spec.predicted_at.isoformat(),
            "fingerprint": prepared.fingerprint,
            "inherited": inherited,
            "inherited_manifest": inherited_manifest,
        }
        target.write_run_record(record)
        return record, {}
    if inherited:
        record["inherited"] = sorted(set(record.get("inherited", [])) | set(inherited))
        record["inherited_manifest"] = inherited_manifest or record.get("inherited_manifest")
        target.write_run_record(record)
    names = {f.name for f in prepared.plan.fragments}
    records = {n: r for n, r in target.recorded_fragments().items() if n in names}
    done = {n: r.files for n, r in records.items()}
    prepared.resumed_statistics = [r.statistics for r in records.values() if r.statistics]
    target.discard_unrecorded(set(done))
    log.info("resuming run %s: %d row group(s) already staged", record["run_id"], len(done))
    return record, done


def what_changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    changes = []
    old_inputs, new_inputs = before.get("inputs", {}), after.get("inputs", {})
    added = sorted(set(new_inputs) - set(old_inputs))
    removed = sorted(set(old_inputs) - set(new_inputs))
    modified = sorted(
        k for k in set(old_inputs) & set(new_inputs) if old_inputs[k] != new_inputs[k]
    )
    for label, paths in (
        ("input added", added),
        ("input removed", removed),
        ("input changed", modified),
    ):
        if paths:
            more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
            changes.append(f"{label}: {paths[0]}{more}")
    for part in ("model", "scaler"):
        if before.get(part) != after.get(part):
            changes.append(
                f"{part} changed (sha256 {str(before.get(part))[:12]} -> {str(after.get(part))[:12]})"
            )
    old_config, new_config = before.get("config", {}), after.get("config", {})
    for key in sorted(set(old_config) | set(new_config)):
        if old_config.get(key) != new_config.get(key):
            changes.append(
                f"config {key} changed ({old_config.get(key)!r} -> {new_config.get(key)!r})"
            )
    return changes or ["its run record is unreadable"]


def new_run_id() -> str:
    """Sortable and unique: the start time plus 8 random hex digits."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
