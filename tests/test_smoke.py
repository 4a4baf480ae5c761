from batch_infer import run

from .conftest import make_config, read_output


def test_sample_run_commits_every_row(tmp_path, trained_models, churn_input):
    out = tmp_path / "out"
    report = run(make_config(churn_input, out, trained_models["binary"]))
    assert report.rows_out == report.rows_in == 5_000
    assert (out / "_SUCCESS").exists()
    table = read_output(out)
    assert table.num_rows == 5_000
    assert sorted(table.column("customer_id").to_pylist()) == list(range(5_000))
