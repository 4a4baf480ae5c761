"""OpenLineage run events: START when a run begins, COMPLETE or FAIL when it ends.

Sent through openlineage-python's client over HTTP, so its own configuration still applies
(``OPENLINEAGE_DISABLED``, ``OPENLINEAGE_API_KEY``, ``OPENLINEAGE_ENDPOINT``, tags and filters
from ``openlineage.yml``); only the URL comes from ``--openlineage-url`` or ``OPENLINEAGE_URL``.
A receiver that is down is a warning: lineage never fails a run.
"""

from __future__ import annotations

import functools
import logging
import os
import posixpath
from collections import defaultdict
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    dataset_version_dataset,
    error_message_run,
    input_statistics_input_dataset,
    job_type_job,
    nominal_time_run,
    output_statistics_output_dataset,
    processing_engine_run,
)
from openlineage.client.transport.http import HttpConfig, HttpTransport
from openlineage.client.uuid import generate_new_uuid

from ..redaction import split_userinfo
from .datasets import dataset_name
from .facts import RunFacts

log = logging.getLogger(__name__)

VERSION = version("batch-infer")
PRODUCER = f"https://pypi.org/project/batch-infer/{VERSION}/"
DEFAULT_NAMESPACE = "batch-infer"
SUCCEEDED = ("committed", "skipped")
# Fewer retries than the client's default (5, ~9 s): a batch job should not wait long on lineage.
RETRY = {"total": 3, "connect": 3, "read": 3, "backoff_factor": 0.3}


def emit_start(facts: RunFacts, url: str | None) -> None:
    """START, with the datasets known so far (none before the input is planned)."""
    _emit(facts, url, RunState.START, facts.started_at)


def emit_end(facts: RunFacts, url: str | None) -> None:
    """COMPLETE for a committed or skipped run, else FAIL with the run's error message."""
    state = RunState.COMPLETE if facts.status in SUCCEEDED else RunState.FAIL
    _emit(facts, url, state, facts.finished_at or datetime.now(UTC).timestamp())


def run_uuid(facts: RunFacts) -> str:
    """The OpenLineage run id (a UUID, one per attempt), made at START and kept on ``facts``."""
    current = getattr(facts, "lineage_run_id", None)
    if not current:
        current = str(generate_new_uuid())
        facts.lineage_run_id = current
    return current


def _emit(facts: RunFacts, url: str | None, state: RunState, when: float) -> None:
    url = url or os.environ.get("OPENLINEAGE_URL")
    if not url:
        return
    try:
        event = _event(facts, state, when)
        _client(url).emit(event)
    except Exception as exc:  # lineage never fails a run
        log.warning(
            "could not send the OpenLineage %s event to %s: %s",
            state.value,
            split_userinfo(url)[0],  # never the credentials
            " ".join(str(exc).split()) or type(exc).__name__,
        )


def _client(url: str) -> OpenLineageClient:
    endpoint = os.environ.get("OPENLINEAGE_ENDPOINT", "api/v1/lineage")
    return _cached_client(url, endpoint, os.environ.get("OPENLINEAGE_API_KEY"))


@functools.lru_cache(maxsize=4)
def _cached_client(url: str, endpoint: str, api_key: str | None) -> OpenLineageClient:
    """One client per receiver: START and END share its connections (and its one log line)."""
    config: dict = {"url": url, "endpoint": endpoint, "retry": RETRY}
    if api_key:
        config["auth"] = {"type": "api_key", "apiKey": api_key}
    return OpenLineageClient(transport=HttpTransport(HttpConfig.from_dict(config)))


def _event(facts: RunFacts, state: RunState, when: float) -> RunEvent:
    run_facets: dict = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=VERSION, name="batch-infer", producer=PRODUCER
        )
    }
    if facts.run_date:
        run_facets["nominalTime"] = nominal_time_run.NominalTimeRunFacet(
            nominalStartTime=f"{facts.run_date}T00:00:00Z", producer=PRODUCER
        )
    if state == RunState.FAIL:
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=facts.error or f"failed with exit code {facts.exit_code}",
            programmingLanguage="python",
            producer=PRODUCER,
        )
    job_type = job_type_job.JobTypeJobFacet(
        processingType="BATCH", integration="BATCH_INFER", jobType="JOB", producer=PRODUCER
    )
    return RunEvent(
        eventType=state,
        eventTime=datetime.fromtimestamp(when, UTC).isoformat(),
        run=Run(runId=run_uuid(facts), facets=run_facets),
        job=Job(
            namespace=os.environ.get("OPENLINEAGE_NAMESPACE", DEFAULT_NAMESPACE),
            name=facts.job,
            facets={"jobType": job_type},
        ),
        inputs=_inputs(facts, ended=state != RunState.START),
        outputs=_outputs(facts, ended=state != RunState.START),
        producer=PRODUCER,
    )


def _inputs(facts: RunFacts, ended: bool) -> list[InputDataset]:
    """One dataset per place the input files are in: their common folder, not every file; a
    table input is the table (its version or snapshot read in the ``version`` facet)."""
    places: dict[str, list[str]] = defaultdict(list)
    if facts.input_table:
        namespace, name = dataset_name(facts.input_table, facts.catalog_namespace)
        places[namespace].append(name)
    for url in [] if facts.input_table else facts.inputs:
        namespace, name = dataset_name(url)
        places[namespace].append(name)
    datasets = []
    for namespace, names in places.items():
        name = names[0] if len(names) == 1 else posixpath.commonpath(names)
        facets: dict[str, Any] = {}
        read = _version_read(facts.input_version)
        if read is not None:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=read, producer=PRODUCER
            )
        if ended and len(places) == 1:
            facets["inputStatistics"] = (
                input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
                    rowCount=facts.rows_in,
                    size=facts.bytes_read,
                    fileCount=facts.files_in,
                    producer=PRODUCER,
                )
            )
        input_facets = {k: v for k, v in facets.items() if k != "version"}
        dataset_facets = {k: v for k, v in facets.items() if k == "version"}
        datasets.append(
            InputDataset(
                namespace=namespace, name=name, facets=dataset_facets, inputFacets=input_facets
            )
        )
    return datasets


def _version_read(version: dict[str, Any] | None) -> str | None:
    """A table input's version (Delta) or snapshot id (Iceberg), as text."""
    if not version:
        return None
    value = version.get("version", version.get("snapshot"))
    return None if value is None else str(value)


def _outputs(facts: RunFacts, ended: bool) -> list[OutputDataset]:
    if not facts.output:
        return []
    namespace, name = dataset_name(facts.output, facts.catalog_namespace)
    facets = {}
    dataset_facets = {}
    if ended and facts.table_commit:  # "version 4" / "snapshot 61…": the commit holding the run
        dataset_facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=facts.table_commit.rpartition(" ")[2], producer=PRODUCER
        )
    if ended and facts.status == "committed":
        facets["outputStatistics"] = (
            output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                rowCount=facts.rows_scored,
                size=facts.bytes_written,
                fileCount=facts.files_out,
                producer=PRODUCER,
            )
        )
    return [
        OutputDataset(namespace=namespace, name=name, facets=dataset_facets, outputFacets=facets)
    ]


__all__ = ["dataset_name", "emit_end", "emit_start", "run_uuid"]
