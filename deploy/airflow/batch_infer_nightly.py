"""Nightly scoring with batch-infer, as an Airflow DAG (Airflow 3, and 2.10+).

One task runs the `batch-infer` executable, so Airflow's own environment needs nothing of
batch-infer installed: point it at the executable and the config (see *Settings*).

- Airflow's logical date `{{ ds }}` is `--run-date`: each date fills its own `dt={run_date}`
  output and `predicted_at`, so the files of a date are the same whenever it is scored.
- `--if-exists skip`: a rerun of a date whose output is committed exits 0 and touches nothing,
  so clearing a task or a backfill over done dates is safe.
- `--output-format json`: the last output line is the run report; it becomes the task's XCom as
  a dict (`{"status": "committed" | "skipped", "rows_out": ..., "output": ...}`).

Retries. batch-infer exits 75 when it should be tried again later (another run holds the
output's lock, the object store kept failing): Airflow retries it. Exits 2 (usage or config),
3 (bad input), 4 (model) and 5 (output conflict) would fail the same way on every try, so the
task fails at once, without retries. Anything else (1, a kill by a signal) is retried too: an
interrupted run is resumed from what it staged. BashOperator retries every non-zero exit alike,
and its `skip_on_exit_code` can only skip, so `BatchInferOperator` below is a BashOperator that
reads the exit code from the process it ran and raises AirflowFailException (fail, no retry)
for 2-5. It keeps what BashOperator does: templating, the live log, SIGTERM to batch-infer when
the task is killed or times out (batch-infer then exits 143 and the next try resumes).

Tested with Airflow 3.3.2 by tests/test_deploy.py (`airflow dags test`), and with 2.11.2.

Settings (an Airflow Variable, read when the task runs, else an environment variable):
    batch_infer_executable  BATCH_INFER_EXECUTABLE   default: batch-infer (on PATH)
    batch_infer_config      BATCH_INFER_CONFIG_FILE  default: /etc/batch-infer/nightly.yaml
    BATCH_INFER_RETRIES (default 3), BATCH_INFER_RETRY_DELAY_SECONDS (default 600): read when
    the DAG file is parsed, so they are environment variables only.
The worker's environment reaches batch-infer: `BATCH_INFER_<SECTION>__<FIELD>` variables
override the config, and the AWS_* variables (or an instance role) give S3 credentials.

In a container instead (the image of deploy/Dockerfile), the same command and exit-code rule:
    KubernetesPodOperator(task_id="score", image="registry.example.com/batch-infer:0.1.0",
        arguments=["run", "--config", "/etc/batch-infer/nightly.yaml", "--run-date", "{{ ds }}",
                   "--if-exists", "skip", "--output-format", "json"],
        do_xcom_push=False, ...)   # the JSON is the last line of the pod's log
    DockerOperator(task_id="score", image=..., command=[same arguments], ...)
Those operators report only "failed"; to fail 2-5 without retries there, give the pod's Job a
podFailurePolicy as deploy/k8s/cronjob.yaml does, or keep this BashOperator with
`kubectl`/`docker run` as the executable.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 2
    from airflow import DAG
    from airflow.exceptions import AirflowException, AirflowFailException
    from airflow.operators.bash import BashOperator

# Exit codes that a retry cannot fix: usage/config, bad input, model, output conflict.
NOT_RETRIED = {2: "usage or configuration", 3: "bad input", 4: "model", 5: "output conflict"}

EXECUTABLE = os.environ.get("BATCH_INFER_EXECUTABLE", "batch-infer")
CONFIG_FILE = os.environ.get("BATCH_INFER_CONFIG_FILE", "/etc/batch-infer/nightly.yaml")


class BatchInferOperator(BashOperator):
    """A BashOperator whose task fails without retries when batch-infer exits 2, 3, 4 or 5."""

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowException:
            process = self.subprocess_hook.sub_process  # the bash that ran batch-infer
            code = process.returncode if process is not None else None
            if code in NOT_RETRIED:
                raise AirflowFailException(
                    f"batch-infer exited {code} ({NOT_RETRIED[code]} error): a retry would fail "
                    "the same way, so it is not retried; the error is in the log above"
                ) from None
            raise


with DAG(
    dag_id="batch_infer_nightly",
    schedule="30 2 * * *",  # 02:30 UTC, for the previous day's logical date
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": int(os.environ.get("BATCH_INFER_RETRIES", "3")),
        "retry_delay": timedelta(
            seconds=int(os.environ.get("BATCH_INFER_RETRY_DELAY_SECONDS", "600"))
        ),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=6),
    },
    tags=["batch-infer"],
) as dag:
    BatchInferOperator(
        task_id="score",
        # `exec`: batch-infer replaces bash, so its exit code and signals are the task's own.
        bash_command=(
            'exec "$BATCH_INFER_EXECUTABLE" run --config "$BATCH_INFER_CONFIG_FILE"'
            " --run-date {{ ds }} --if-exists skip --output-format json"
        ),
        env={
            "BATCH_INFER_EXECUTABLE": f"{{{{ var.value.get('batch_infer_executable', {EXECUTABLE!r}) }}}}",
            "BATCH_INFER_CONFIG_FILE": f"{{{{ var.value.get('batch_infer_config', {CONFIG_FILE!r}) }}}}",
        },
        append_env=True,  # and the worker's environment: BATCH_INFER_*, AWS_*, PATH
        skip_on_exit_code=None,  # BashOperator skips on 99 by default; batch-infer has no 99
        output_processor=json.loads,  # the last line, the run report, as the XCom
    )
