"""Reading ahead while the model loads: the first fragments, decoded exactly as a worker reads
them, no more than the budget, nothing once the model is loaded or for Dask workers."""

from __future__ import annotations

from concurrent.futures import Future

import pyarrow as pa

from batch_infer import planning
from batch_infer.config import load_config
from batch_infer.inputs import plan_input, read_fragment

from .conftest import make_config


def config_for(churn_input, tmp_path, **extra):
    return make_config(churn_input, tmp_path / "out", tmp_path / "model.joblib", **extra)


def still_loading() -> Future:
    return Future()  # never completed: the model is still loading


def test_the_first_fragments_are_read_as_a_worker_reads_them(churn_input, tmp_path):
    config = config_for(churn_input, tmp_path)
    plan = plan_input(config.input)
    ready = planning.read_ahead_while(plan, still_loading(), config)
    names = [f.name for f in plan.fragments]
    assert list(ready) == names[: len(ready)] and len(ready) == len(names)  # small: all of them
    for fragment in plan.fragments:
        expected = pa.Table.from_batches(
            list(read_fragment(plan.fs, fragment, plan.schema, plan.partition_schema))
        )
        assert pa.Table.from_batches(ready[fragment.name], schema=plan.schema).equals(expected)


def test_no_more_than_the_budget_is_held(churn_input, tmp_path, monkeypatch):
    config = config_for(churn_input, tmp_path)
    plan = plan_input(config.input)
    first = list(read_fragment(plan.fs, plan.fragments[0], plan.schema, plan.partition_schema))
    monkeypatch.setattr(planning, "READ_AHEAD_BYTES", sum(b.nbytes for b in first) + 1)
    ready = planning.read_ahead_while(plan, still_loading(), config)
    assert list(ready) == [f.name for f in plan.fragments[:2]]  # the one past the budget ends it


def test_nothing_is_read_once_the_model_is_loaded_or_for_dask(churn_input, tmp_path):
    config = config_for(churn_input, tmp_path)
    plan = plan_input(config.input)
    loaded: Future = Future()
    loaded.set_result(None)
    assert planning.read_ahead_while(plan, loaded, config) == {}
    dask = load_config(
        None,
        {
            "input": {"path": str(churn_input)},
            "model": {"path": str(tmp_path / "model.joblib")},
            "output": {"path": str(tmp_path / "out")},
            "engine": {"kind": "dask", "scheduler": "tcp://127.0.0.1:1"},
        },
        environ={},
    )
    assert planning.read_ahead_while(plan, still_loading(), dask) == {}
