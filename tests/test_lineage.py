"""OpenLineage events received by a real HTTP server on loopback, checked against the spec's shape."""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version

import pytest

from batch_infer.observe import lineage
from batch_infer.observe.facts import RunFacts

from .conftest import run_sample_cli

STARTED = 1_780_000_000.0
SPEC = "https://openlineage.io/spec/"
# Variables the openlineage client reads, or writes (it aliases OPENLINEAGE_URL into these).
CLIENT_VARIABLES = [
    "OPENLINEAGE_URL",
    "OPENLINEAGE_NAMESPACE",
    "OPENLINEAGE_API_KEY",
    "OPENLINEAGE_ENDPOINT",
    "OPENLINEAGE_DISABLED",
    "OPENLINEAGE_CONFIG",
    "OPENLINEAGE__TRANSPORT__TRANSPORTS__DEFAULT_HTTP__TYPE",
    "OPENLINEAGE__TRANSPORT__TRANSPORTS__DEFAULT_HTTP__URL",
    "OPENLINEAGE__TRANSPORT__TRANSPORTS__DEFAULT_HTTP__AUTH",
    "OPENLINEAGE__TRANSPORT__TRANSPORTS__DEFAULT_HTTP__ENDPOINT",
]


@pytest.fixture(autouse=True)
def no_lineage_environment(monkeypatch):
    for name in CLIENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


class Receiver:
    """An OpenLineage HTTP endpoint: keeps each request's path, headers and JSON body."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, dict]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def events(self) -> list[dict]:
        return [body for _, _, body in self.requests]


@pytest.fixture
def receiver():
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def facts_of(**changes) -> RunFacts:
    facts = RunFacts(
        job="scores",
        output="s3://acme-scores/churn/dt=2026-06-01",
        inputs=[
            "s3://acme-data/churn/events/event_date=2026-05-31/part-0.parquet",
            "s3://acme-data/churn/events/event_date=2026-06-01/part-0.parquet",
        ],
        run_id="20260601T000000Z-abcdef12",
        run_date="2026-06-01",
        model_version="v7",
        started_at=STARTED,
        rows_in=1_000,
        files_in=2,
        bytes_read=123_456,
    )
    for name, value in changes.items():
        setattr(facts, name, value)
    return facts


def finish(facts: RunFacts, status: str, **changes) -> RunFacts:
    facts.status = status
    facts.finished_at = STARTED + 8
    for name, value in changes.items():
        setattr(facts, name, value)
    return facts


def check_facets(facets: dict) -> None:
    """Every facet names its producer and the schema it follows (the spec requires both)."""
    for name, facet in facets.items():
        assert facet["_producer"], name
        assert facet["_schemaURL"].startswith(SPEC), name


def check_event(event: dict, event_type: str) -> None:
    """The OpenLineage RunEvent's required fields and formats (spec 2-0-2)."""
    assert event["eventType"] == event_type
    assert event["schemaURL"].startswith(SPEC) and "RunEvent" in event["schemaURL"]
    assert event["producer"] == f"https://pypi.org/project/batch-infer/{version('batch-infer')}/"
    assert datetime.fromisoformat(event["eventTime"]).utcoffset() is not None
    uuid.UUID(event["run"]["runId"])
    assert event["job"] == {**event["job"], "namespace": "batch-infer", "name": "scores"}
    check_facets(event["run"].get("facets", {}))
    check_facets(event["job"].get("facets", {}))
    for dataset in event.get("inputs", []) + event.get("outputs", []):
        assert dataset["namespace"] and dataset["name"]
        check_facets(dataset.get("facets", {}))
        check_facets(dataset.get("inputFacets", dataset.get("outputFacets", {})))


def test_start_and_complete_of_a_committed_run(receiver):
    facts = facts_of()
    lineage.emit_start(facts, receiver.url)
    finish(facts, "committed", exit_code=0, rows_scored=990, files_out=3, bytes_written=65_432)
    lineage.emit_end(facts, receiver.url)

    assert [path for path, _, _ in receiver.requests] == ["/api/v1/lineage"] * 2
    assert all(h["Content-Type"] == "application/json" for _, h, _ in receiver.requests)
    start, complete = receiver.events
    check_event(start, "START")
    check_event(complete, "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert start["eventTime"] == "2026-05-28T20:26:40+00:00"
    assert complete["eventTime"] == "2026-05-28T20:26:48+00:00"
    assert complete["job"]["facets"]["jobType"]["processingType"] == "BATCH"
    assert complete["run"]["facets"]["nominalTime"]["nominalStartTime"] == "2026-06-01T00:00:00Z"
    assert "errorMessage" not in complete["run"]["facets"]

    [source] = complete["inputs"]
    assert (source["namespace"], source["name"]) == ("s3://acme-data", "churn/events")
    assert source["inputFacets"]["inputStatistics"]["rowCount"] == 1_000
    [target] = complete["outputs"]
    assert (target["namespace"], target["name"]) == ("s3://acme-scores", "churn/dt=2026-06-01")
    statistics = target["outputFacets"]["outputStatistics"]
    assert (statistics["rowCount"], statistics["size"], statistics["fileCount"]) == (990, 65_432, 3)


def test_fail_carries_the_error_message(receiver):
    facts = facts_of()
    lineage.emit_start(facts, receiver.url)
    error = "input 's3://acme-data/churn/events/' does not exist — check --input"
    finish(facts, "failed", exit_code=3, error=error)
    lineage.emit_end(facts, receiver.url)

    start, fail = receiver.events
    check_event(fail, "FAIL")
    assert fail["run"]["runId"] == start["run"]["runId"]
    message = fail["run"]["facets"]["errorMessage"]
    assert message["message"] == error and message["programmingLanguage"] == "python"
    assert "outputStatistics" not in fail["outputs"][0]["outputFacets"]


def test_each_run_gets_its_own_run_id(receiver):
    first, second = facts_of(), facts_of()
    lineage.emit_start(first, receiver.url)
    lineage.emit_start(second, receiver.url)
    assert receiver.events[0]["run"]["runId"] != receiver.events[1]["run"]["runId"]


def test_url_from_the_environment_and_the_namespace(receiver, monkeypatch):
    monkeypatch.setenv("OPENLINEAGE_URL", receiver.url)
    monkeypatch.setenv("OPENLINEAGE_NAMESPACE", "nightly")
    monkeypatch.setenv("OPENLINEAGE_API_KEY", "k3y-for-the-test")
    facts = facts_of()
    lineage.emit_start(facts, None)

    [(_, headers, event)] = receiver.requests
    assert event["job"]["namespace"] == "nightly"
    assert headers["Authorization"] == "Bearer k3y-for-the-test"


def test_no_url_sends_nothing(receiver):
    lineage.emit_start(facts_of(), None)
    assert receiver.requests == []


def test_local_paths_are_file_datasets_with_absolute_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert lineage.dataset_name("scores/dt=2026-06-01") == (
        "file",
        f"{tmp_path}/scores/dt=2026-06-01",
    )
    assert lineage.dataset_name("file:///data/events/") == ("file", "/data/events")
    assert lineage.dataset_name("s3a://bucket/key/part.parquet") == (
        "s3://bucket",
        "key/part.parquet",
    )
    assert lineage.dataset_name("gcs://bucket/key") == ("gs://bucket", "key")


def test_a_receiver_that_is_down_is_a_warning(caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://ops:s3cret-token@127.0.0.1:{probe.getsockname()[1]}"
    caplog.set_level(logging.WARNING, logger="batch_infer.observe.lineage")
    facts = facts_of()
    lineage.emit_start(facts, url)
    lineage.emit_end(finish(facts, "failed", exit_code=3, error="boom"), url)

    mine = [r for r in caplog.records if r.name == "batch_infer.observe.lineage"]
    assert [r.levelno for r in mine] == [logging.WARNING] * 2
    assert "could not send the OpenLineage START event to http://127.0.0.1:" in mine[0].getMessage()
    assert "FAIL event" in mine[1].getMessage()
    assert "s3cret-token" not in caplog.text


# batch-infer run sends them -----------------------------------------------------------------------


def run_cli(sample, tmp_path, url, input_path=None):
    return run_sample_cli(sample, tmp_path, "--openlineage-url", url, input_path=input_path)


def test_run_sends_start_and_complete(sample_copy, tmp_path, receiver):
    result = run_cli(sample_copy, tmp_path, receiver.url)
    assert result.exit_code == 0, result.stderr

    start, complete = receiver.events
    check_event(start, "START")
    check_event(complete, "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"]
    [source] = complete["inputs"]
    assert source == {**source, "namespace": "file", "name": str(sample_copy / "churn")}
    [target] = complete["outputs"]
    assert target == {**target, "namespace": "file", "name": str(tmp_path / "scores")}
    assert target["outputFacets"]["outputStatistics"]["rowCount"] == 20_000


def test_run_that_fails_sends_fail(sample_copy, tmp_path, receiver):
    result = run_cli(sample_copy, tmp_path, receiver.url, input_path=tmp_path / "missing")
    assert result.exit_code == 3, result.stderr

    start, fail = receiver.events
    check_event(fail, "FAIL")
    assert fail["run"]["runId"] == start["run"]["runId"]
    assert "does not exist" in fail["run"]["facets"]["errorMessage"]["message"]


# tables: named per the naming spec ------------------------------------------------------------


def test_table_dataset_names(tmp_path, monkeypatch):
    """Delta: where the table is (``file`` + absolute path, ``s3://bucket`` + key), the version
    dropped; Iceberg: the catalog's namespace and NAMESPACE.TABLE."""
    from batch_infer.config import CatalogConfig
    from batch_infer.observe.datasets import catalog_namespace

    monkeypatch.chdir(tmp_path)
    assert lineage.dataset_name("delta:tables/scores@3") == ("file", f"{tmp_path}/tables/scores")
    assert lineage.dataset_name("delta:s3://lake/tables/scores") == ("s3://lake", "tables/scores")
    assert lineage.dataset_name("delta:s3a://user:pw@lake/t@12") == ("s3://lake", "t")
    assert lineage.dataset_name("iceberg:db.scores@61", "hive://meta:9083") == (
        "hive://meta:9083",
        "db.scores",
    )
    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path / "no-pyiceberg-home"))
    for name in [n for n in __import__("os").environ if n.startswith("PYICEBERG_CATALOG")]:
        monkeypatch.delenv(name)
    assert catalog_namespace(CatalogConfig(warehouse="wh")) == f"sqlite:///{tmp_path}/wh/catalog.db"
    rest = CatalogConfig(properties={"uri": "https://ops:s3cret@catalog.example.com/api/"})
    assert catalog_namespace(rest) == "https://catalog.example.com/api"
    monkeypatch.setenv("PYICEBERG_CATALOG__PROD__URI", "thrift://metastore:9083")
    assert catalog_namespace(CatalogConfig(name="prod")) == "hive://metastore:9083"


def test_a_run_from_a_delta_version_into_an_iceberg_table(
    tmp_path, receiver, monkeypatch, trained_models
):
    """The real CLI reads ``delta:T@0`` and commits to ``iceberg:db.scores``: the input is the
    Delta table (not its files) with the version read, the output the Iceberg table in its
    catalog's namespace with the snapshot the run committed."""
    deltalake = pytest.importorskip("deltalake")
    pytest.importorskip("pyiceberg")
    from pyiceberg.catalog.sql import SqlCatalog

    from .conftest import churn_table
    from .tables_helpers import cli

    monkeypatch.setenv("PYICEBERG_HOME", str(tmp_path / "no-pyiceberg-home"))
    for name in [n for n in __import__("os").environ if n.startswith("PYICEBERG_CATALOG")]:
        monkeypatch.delenv(name)
    source = tmp_path / "source"
    rows = churn_table(2_000, seed=4)
    deltalake.write_deltalake(str(source), rows.slice(0, 1_000))
    deltalake.write_deltalake(str(source), rows.slice(1_000), mode="append")
    warehouse = tmp_path / "warehouse"
    done = cli(
        [
            __import__("sys").executable, "-m", "batch_infer", "run",
            "--input", f"delta:{source}@0", "--output", "iceberg:db.scores",
            "--model", str(trained_models["binary"]), "--warehouse", str(warehouse),
            "--openlineage-url", receiver.url,
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    start, complete = receiver.events
    assert complete["eventType"] == "COMPLETE"
    for dataset in complete["inputs"] + complete["outputs"]:
        check_facets(dataset["facets"])
    [source_dataset] = complete["inputs"]
    assert (source_dataset["namespace"], source_dataset["name"]) == ("file", str(source))
    assert source_dataset["facets"]["version"]["datasetVersion"] == "0"
    assert source_dataset["inputFacets"]["inputStatistics"]["rowCount"] == 1_000
    [target] = complete["outputs"]
    namespace = f"sqlite:///{warehouse}/catalog.db"
    assert (target["namespace"], target["name"]) == (namespace, "db.scores")
    catalog = SqlCatalog("default", uri=namespace, warehouse=f"file://{warehouse}")
    snapshot = catalog.load_table("db.scores").current_snapshot()
    assert target["facets"]["version"]["datasetVersion"] == str(snapshot.snapshot_id)
    assert target["outputFacets"]["outputStatistics"]["rowCount"] == 1_000
