"""Random Parquet inputs through the real ``batch-infer run``: it either commits every row exactly
once or fails cleanly.

Hypothesis writes one to three files (every Arrow type pyarrow writes to Parquet, nulls, NaN and
infinities, int64 extremes, empty row groups, zero-row files, schemas that differ slightly from
file to file, hive ``key=value`` folders) and scores them with three small models fitted here: a
numeric contract (LogisticRegression on three float features), a categorical one (OneHotEncoder on
a string column + a scaled number) and a text one (TfidfVectorizer). Every run must:

- exit 0 (committed), 2 (usage) or 3 (bad input): never 1 (a bug), 4 or 5;
- on failure, print exactly one ``Error: ...`` line, last on stderr, and no traceback, and leave
  the output with nothing committed: no ``_SUCCESS``, no ``_manifest.json``, no Parquet file
  outside ``_``-prefixed folders, no ``_staging`` (removed after bad input or usage errors);
- on success, hold every input row exactly once, either in the output or in ``_rejects/``
  (each row carries a unique ``rid``), read back with pyarrow, as the manifest counts them.

Run it longer locally (the examples are per model)::

    FUZZ_EXAMPLES=500 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_fuzz_inputs.py
"""

from __future__ import annotations

import io
import json
import os
import shutil
import string
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, note, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from batch_infer.cli import app

from .ci_rules import in_ci

# Settings, chosen so that CI stays well under 90 s for the three models together (about 0.1 s
# per run, plus writing the files) and is reproducible:
# - max_examples: FUZZ_EXAMPLES per model (default 25); raise it locally to hunt for bugs;
# - deadline=None: a run's time varies with the machine's load, never a failure;
# - derandomize under CI=true (the same examples on every CI run) and no example database there;
#   locally examples are random and failures are replayed from .hypothesis/;
# - no shrinking under CI=true (shrinking these inputs takes minutes): the failing example is
#   printed as drawn, and `CI=true pytest tests/test_fuzz_inputs.py` replays it exactly.
# For bug hunting: FUZZ_SHRINK=0 skips shrinking (=1 forces it under CI), and FUZZ_KEEP=DIR
# keeps the input files of every failing run there, to replay with `batch-infer run --verbose`;
# with FUZZ_KEEP, FUZZ_CONTINUE=1 records failures there and goes on (one run finds many bugs);
# FUZZ_EXCLUDE="string_view timestamp" leaves out column kinds whose names start so (known bugs).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
SHRINK = os.environ.get("FUZZ_SHRINK", "0" if in_ci() else "1") != "0"
KEEP = os.environ.get("FUZZ_KEEP")
FUZZ = settings(
    max_examples=EXAMPLES,
    phases=[p for p in Phase if p is not Phase.shrink or SHRINK],
    deadline=None,
    derandomize=in_ci(),
    database=None if in_ci() else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

ALLOWED_EXITS = {0, 2, 3}

# --------------------------------------------------------------------------------------------
# column kinds: an Arrow type and how to draw its values


@dataclass(frozen=True)
class Kind:
    """One Arrow column type the fuzz writes, with a strategy for a (non-null) value."""

    name: str
    type: pa.DataType
    values: st.SearchStrategy
    # how a Python list (None for null) becomes an array of ``type``
    build: str = "direct"


def _int_kind(arrow_type: pa.DataType) -> Kind:
    info = np.iinfo(arrow_type.to_pandas_dtype())
    lo, hi = int(info.min), int(info.max)
    edges = [lo, hi, 0, 1, lo + 1, hi - 1] + ([-1] if lo < 0 else [])
    if hi > 2**53:
        edges += [2**53 + 1, 2**63 - 1 if hi >= 2**63 - 1 else hi]
    values = st.one_of(st.sampled_from(edges), st.integers(lo, hi))
    return Kind(str(arrow_type), arrow_type, values)


def _float_values(width: int) -> st.SearchStrategy:
    return st.floats(width=width, allow_nan=True, allow_infinity=True, allow_subnormal=True)


SMALL_TEXT = st.text(alphabet=string.ascii_letters + " é日\x00", max_size=12)
WORDS = st.lists(st.sampled_from(["good", "bad", "price", "late", "ok", "zzz", ""]), max_size=5)
DAY_MS = 86_400_000


def _kinds() -> list[Kind]:
    kinds = [_int_kind(t) for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64())]
    kinds += [_int_kind(t) for t in (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())]
    kinds += [
        Kind("float16", pa.float16(), _float_values(16), "float16"),
        Kind("float32", pa.float32(), _float_values(32)),
        Kind("float64", pa.float64(), _float_values(64)),
        Kind("bool", pa.bool_(), st.booleans()),
        Kind(
            "decimal128(10,2)",
            pa.decimal128(10, 2),
            st.decimals(-(10**8) + 1, 10**8 - 1, places=2, allow_nan=False, allow_infinity=False),
        ),
        Kind(
            "decimal128(38,10)",
            pa.decimal128(38, 10),
            st.decimals(
                Decimal("-" + "9" * 28),
                Decimal("9" * 28),
                places=10,
                allow_nan=False,
                allow_infinity=False,
            ),
        ),
        Kind(
            "decimal256(50,5)",
            pa.decimal256(50, 5),
            st.decimals(-(10**44), 10**44, places=5, allow_nan=False, allow_infinity=False),
        ),
        Kind("string", pa.string(), SMALL_TEXT),
        Kind("large_string", pa.large_string(), SMALL_TEXT),
        Kind("binary", pa.binary(), st.binary(max_size=8)),
        Kind("large_binary", pa.large_binary(), st.binary(max_size=8)),
        Kind("fixed_size_binary", pa.binary(3), st.binary(min_size=3, max_size=3)),
        Kind("dictionary<string>", pa.dictionary(pa.int32(), pa.string()), SMALL_TEXT, "dict"),
        Kind("dictionary<int64>", pa.dictionary(pa.int8(), pa.int64()), st.integers(-5, 5), "dict"),
        Kind("date32", pa.date32(), st.integers(-(2**31) + 1, 2**31 - 1), "cast"),
        Kind("date64", pa.date64(), st.integers(-(10**8), 10**8), "date64"),
        Kind("time32[s]", pa.time32("s"), st.integers(0, 86_399), "cast"),
        Kind("time64[ns]", pa.time64("ns"), st.integers(0, 86_400 * 10**9 - 1), "cast"),
        Kind("duration[ms]", pa.duration("ms"), st.integers(-(2**50), 2**50), "cast"),
        Kind("null", pa.null(), st.none()),
    ]
    for unit in ("s", "ms", "us", "ns"):
        raw = st.integers(-(2**62), 2**62) if unit == "ns" else st.integers(-(2**50), 2**50)
        for tz in (None, "UTC", "America/New_York", "+05:30"):
            kinds.append(Kind(f"timestamp[{unit},{tz}]", pa.timestamp(unit, tz), raw, "cast"))
    kinds += [
        Kind("list<int64>", pa.list_(pa.int64()), st.lists(st.integers(-9, 9) | st.none(), max_size=3)),
        Kind("list<string>", pa.list_(pa.string()), st.lists(SMALL_TEXT, max_size=3)),
        Kind("large_list<float64>", pa.large_list(pa.float64()), st.lists(_float_values(64), max_size=3)),
        Kind("fixed_size_list<int32,2>", pa.list_(pa.int32(), 2), st.lists(st.integers(-9, 9), min_size=2, max_size=2)),
        Kind(
            "struct<a:int64,b:string>",
            pa.struct([("a", pa.int64()), ("b", pa.string())]),
            st.fixed_dictionaries({"a": st.integers(-9, 9) | st.none(), "b": SMALL_TEXT | st.none()}),
        ),
        Kind(
            "map<string,int64>",
            pa.map_(pa.string(), pa.int64()),
            st.dictionaries(st.sampled_from("abc"), st.integers(-9, 9), max_size=3).map(
                lambda d: list(d.items())
            ),
        ),
        Kind(
            "list<struct<x:float64>>",
            pa.list_(pa.struct([("x", pa.float64())])),
            st.lists(st.fixed_dictionaries({"x": _float_values(64)}), max_size=2),
        ),
    ]  # fmt: skip
    if hasattr(pa, "string_view"):
        kinds.append(Kind("string_view", pa.string_view(), SMALL_TEXT))
    if hasattr(pa, "decimal64"):
        kinds.append(
            Kind(
                "decimal64(12,2)",
                pa.decimal64(12, 2),
                st.decimals(-(10**9), 10**9, places=2, allow_nan=False, allow_infinity=False),
            )
        )
    if hasattr(pa, "binary_view"):
        kinds.append(Kind("binary_view", pa.binary_view(), st.binary(max_size=8)))
    # kind names hold commas (timestamp[ms,UTC]): excluded by name prefix, space-separated
    excluded = tuple(os.environ.get("FUZZ_EXCLUDE", "").split())
    return [
        k
        for k in kinds
        if _parquet_writes(k.type) and not (excluded and k.name.startswith(excluded))
    ]


def _parquet_writes(arrow_type: pa.DataType) -> bool:
    """Only the types this pyarrow can write to Parquet (float16 since pyarrow 15, ...)."""
    try:
        pq.write_table(pa.table({"x": pa.nulls(1, arrow_type)}), io.BytesIO())
    except (pa.ArrowException, NotImplementedError):
        return False
    return True


KINDS = {k.name: k for k in _kinds()}
NUMERIC_KINDS = [
    n
    for n, k in KINDS.items()
    if (pa.types.is_integer(k.type) or pa.types.is_floating(k.type) or pa.types.is_decimal(k.type))
    or n in ("bool", "dictionary<int64>")
]
STRING_KINDS = [
    k for k in ("string", "large_string", "dictionary<string>", "string_view") if k in KINDS
]
# a column of the same values written as a sibling type by another writer
SIBLINGS = {
    "int32": ["int64", "int16"],
    "int64": ["int32", "uint32"],
    "float32": ["float64"],
    "float64": ["float32"],
    "string": ["large_string", "dictionary<string>"],
    "large_string": ["string"],
    "dictionary<string>": ["string", "large_string"],
    "timestamp[us,None]": ["timestamp[ns,None]", "timestamp[ms,None]"],
    "timestamp[ms,UTC]": ["timestamp[us,UTC]"],
    "decimal128(10,2)": ["decimal128(38,10)"],
}


def build_array(kind: Kind, values: list) -> pa.Array:
    """The values (None: null) as an array of the kind's type."""
    if kind.build == "float16":
        mask = np.array([v is None for v in values], dtype=bool)
        data = np.array([0.0 if v is None else v for v in values], dtype=np.float16)
        return pa.array(data, type=pa.float16(), mask=mask)
    if kind.build == "dict":
        return pa.array(values, kind.type.value_type).dictionary_encode()
    if kind.build == "cast":
        storage = pa.int32() if kind.type.bit_width == 32 else pa.int64()
        return pa.array(values, storage).cast(kind.type)
    if kind.build == "date64":
        return pa.array([None if v is None else v * DAY_MS for v in values], pa.int64()).cast(
            pa.date64()
        )
    return pa.array(values, kind.type)


def _cast_kind(array: pa.Array, target: Kind) -> pa.Array | None:
    """The same values as a sibling kind, when pyarrow casts them without loss."""
    try:
        if pa.types.is_dictionary(target.type):
            plain = array.dictionary_decode() if pa.types.is_dictionary(array.type) else array
            return plain.cast(target.type.value_type).dictionary_encode()
        plain = array.dictionary_decode() if pa.types.is_dictionary(array.type) else array
        return plain.cast(target.type)
    except (pa.ArrowException, OverflowError, ValueError, TypeError):
        return None


# --------------------------------------------------------------------------------------------
# the models


@dataclass(frozen=True)
class Contract:
    name: str
    # feature name -> strategy of kind names (mostly what the model takes, sometimes anything)
    features: dict[str, st.SearchStrategy]
    # feature name -> values that fit the model (drawn often, so runs also commit)
    typical: dict[str, st.SearchStrategy]


def _mostly(good: list[str]) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(sorted(KINDS)))


CONTRACTS = {
    "numeric": Contract(
        "numeric",
        {f: _mostly(NUMERIC_KINDS) for f in ("f0", "f1", "f2")},
        {f: st.floats(-3, 3) for f in ("f0", "f1", "f2")},
    ),
    "categorical": Contract(
        "categorical",
        {"cat": _mostly(STRING_KINDS), "num": _mostly(NUMERIC_KINDS)},
        {"cat": st.sampled_from(["red", "green", "blue", "mauve", ""]), "num": st.floats(-3, 3)},
    ),
    "text": Contract(
        "text",
        {"txt": _mostly(STRING_KINDS)},
        {"txt": WORDS.map(" ".join)},
    ),
}


@pytest.fixture(scope="module")
def fuzz_models(tmp_path_factory) -> dict[str, Path]:
    """Three small models fitted here, one per contract, saved with joblib."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    folder = tmp_path_factory.mktemp("fuzz-models")
    rng = np.random.default_rng(0)
    n = 200
    numbers = pd.DataFrame(rng.normal(size=(n, 3)), columns=["f0", "f1", "f2"])
    label = (numbers["f0"] + numbers["f1"] > 0).astype("int64")
    mixed = pd.DataFrame(
        {"cat": rng.choice(["red", "green", "blue"], n).astype(object), "num": numbers["f2"]}
    )
    text = pd.DataFrame(
        {"txt": rng.choice(["good price", "bad late", "ok", "late late bad", "good"], n)}
    )
    text_label = text["txt"].str.contains("good").astype("int64")
    models = {
        "numeric": LogisticRegression().fit(numbers, label),
        "categorical": Pipeline(
            [
                (
                    "columns",
                    ColumnTransformer(
                        [
                            ("cat", OneHotEncoder(handle_unknown="ignore"), ["cat"]),
                            ("num", StandardScaler(), ["num"]),
                        ]
                    ),
                ),
                ("model", LogisticRegression()),
            ]
        ).fit(mixed, label),
        "text": Pipeline(
            [
                ("columns", ColumnTransformer([("txt", TfidfVectorizer(), "txt")])),
                ("model", LogisticRegression()),
            ]
        ).fit(text, text_label),
    }
    paths = {}
    for name, model in models.items():
        paths[name] = folder / f"{name}.joblib"
        joblib.dump(model, paths[name])
    return paths


# --------------------------------------------------------------------------------------------
# the input: files, their schemas, their folders


@dataclass
class FileSpec:
    relative: str
    table: pa.Table
    row_group_size: int
    empty_group_first: bool
    empty_group_last: bool


@st.composite
def column_values(draw, kind: Kind, rows: int, typical: st.SearchStrategy | None) -> pa.Array:
    null = st.none()
    if typical is not None and draw(st.booleans()):
        # values the model takes, in this column's type when pyarrow can cast them
        values = draw(
            st.lists(st.one_of(typical, typical, typical, null), min_size=rows, max_size=rows)
        )
        array = _cast_kind(pa.array(values), kind)
        if array is not None:
            return array
    elements = st.one_of(kind.values, kind.values, null)
    values = draw(st.lists(elements, min_size=rows, max_size=rows))
    return build_array(kind, values)


EXTRA_NAMES = ["region", "event_date", "payload", "id2", "x"]


@st.composite
def inputs(draw, contract: Contract) -> tuple[list[FileSpec], dict]:
    """One to three files: the contract's features, a few other columns, a unique ``rid``."""
    base: dict[str, str] = {}
    for name, kinds in contract.features.items():
        if draw(st.integers(0, 19)):  # 1 in 20: the feature is missing everywhere
            base[name] = draw(kinds)
    for name in draw(st.lists(st.sampled_from(EXTRA_NAMES), max_size=3, unique=True)):
        base[name] = draw(st.sampled_from(sorted(KINDS)))

    n_files = draw(st.integers(1, 3))
    hive = draw(st.sampled_from([None, None, "day", "region", "f0"]))
    hive_values = st.one_of(
        st.integers(-3, 3).map(str),
        st.sampled_from(["a", "b c", "2026-01-01", "__HIVE_DEFAULT_PARTITION__", "1.5", "x%2Fy"]),
    )
    files, next_rid, used = [], 0, set()
    for i in range(n_files):
        rows = draw(st.sampled_from([0, 1, 2, 3, 5, 8, 13, 40]))
        schema = dict(base)
        if i > 0 and draw(st.booleans()):  # a later writer wrote a slightly different file
            change = draw(st.sampled_from(["sibling", "drop", "add", "reorder"]))
            names = list(schema)
            if change == "sibling":
                siblings = {k: [s for s in v if s in KINDS] for k, v in SIBLINGS.items()}
                candidates = [n for n in names if siblings.get(schema[n])]
                if candidates:
                    name = draw(st.sampled_from(candidates))
                    schema[name] = draw(st.sampled_from(siblings[schema[name]]))
            elif change == "drop" and names:
                del schema[draw(st.sampled_from(names))]
            elif change == "add":
                schema["late_" + str(i)] = draw(st.sampled_from(sorted(KINDS)))
            elif change == "reorder":
                order = draw(st.permutations(names))
                schema = {n: schema[n] for n in order}
        columns = {"rid": pa.array(range(next_rid, next_rid + rows), pa.int64())}
        next_rid += rows
        for name, kind_name in schema.items():
            typical = contract.typical.get(name)
            columns[name] = draw(column_values(KINDS[kind_name], rows, typical))
        table = pa.table(columns)
        if draw(st.booleans()):
            table = table.select(draw(st.permutations(table.column_names)))
        folder = f"{hive}={draw(hive_values)}/" if hive else ""
        relative = f"{folder}part-{i}.parquet"
        assume(relative not in used)
        used.add(relative)
        files.append(
            FileSpec(
                relative=relative,
                table=table,
                row_group_size=draw(st.integers(1, max(1, rows))),
                empty_group_first=draw(st.integers(0, 5)) == 0,
                empty_group_last=draw(st.integers(0, 5)) == 0,
            )
        )

    all_columns = sorted({c for f in files for c in f.table.column_names} - {"rid"})
    options = {
        "batch_size": draw(st.sampled_from([None, None, 1, 2, 7])),
        "max_reject_rate": draw(st.sampled_from([None, 1.0, 1.0])),
        "partition_by": draw(
            st.sampled_from([None] * 6 + [c for c in all_columns if c not in contract.features])
        ),
        "spec": draw(st.sampled_from(["folder", "folder", "glob", "file"])),
    }
    return files, options


def write_input(root: Path, files: list[FileSpec]) -> None:
    for spec in files:
        path = root / spec.relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(path, spec.table.schema) as writer:
            if spec.empty_group_first:
                writer.write_table(spec.table.slice(0, 0))
            writer.write_table(spec.table, row_group_size=spec.row_group_size)
            if spec.empty_group_last:
                writer.write_table(spec.table.slice(0, 0))


# --------------------------------------------------------------------------------------------
# running and checking

WARNINGS_SEEN: set[str] = set()


def invoke(args: list[str]):
    """``batch-infer run ARGS`` in process, with the warnings filters a user's shell has."""
    env = {name: None for name in os.environ if name.startswith("BATCH_INFER_")}
    env.pop("BATCH_INFER_CACHE_DIR", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        result = CliRunner().invoke(app, ["run", *args], env=env)
    for warning in caught:
        WARNINGS_SEEN.add(f"{warning.category.__name__}: {warning.message}")
    return result


def describe(result) -> str:
    text = f"exit {result.exit_code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    if result.exc_info and not isinstance(result.exception, SystemExit):
        text += "\n--- exception\n" + "".join(traceback.format_exception(*result.exc_info))
    return text


def check_failure(result, output: Path) -> None:
    """One ``Error:`` line, last on stderr, no traceback, nothing committed."""
    shown = describe(result)
    assert "Traceback" not in result.stdout + result.stderr, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, shown
    assert lines[-1] == errors[0], shown
    if output.exists():
        assert not (output / "_SUCCESS").exists(), shown
        assert not (output / "_manifest.json").exists(), shown
        visible = [
            str(p.relative_to(output))
            for p in output.rglob("*")
            if p.is_file()
            and not any(part.startswith(("_", ".")) for part in p.relative_to(output).parts)
        ]
        assert visible == [], f"visible files left in the output: {visible}\n{shown}"
        assert not (output / "_staging").exists(), f"staging left behind\n{shown}"


def check_success(result, output: Path, rows_in: int) -> None:
    """Committed: every input row once, in the output or among the rejects, as counted."""
    shown = describe(result)
    assert (output / "_SUCCESS").exists(), shown
    manifest = json.loads((output / "_manifest.json").read_text())
    rids = []
    output_rows = 0
    for entry in manifest["files"]:
        table = pq.read_table(output / entry["path"])
        assert table.num_rows == entry["rows"], (entry, shown)
        output_rows += table.num_rows
        rids += table.column("rid").to_pylist()
    rejected = 0
    for entry in manifest.get("rejects") or []:
        table = pq.read_table(output / entry["path"])
        rejected += table.num_rows
        rids += table.column("rid").to_pylist()
    assert sorted(rids) == list(range(rows_in)), f"rows lost or repeated\n{shown}"
    assert output_rows == rows_in - rejected, shown
    assert manifest["rows_in"] == rows_in, shown
    assert manifest["rows_out"] == output_rows, shown
    assert manifest.get("rows_rejected", 0) == rejected, shown
    assert not (output / "_staging").exists(), shown


def _comparable(column: pa.ChunkedArray | pa.Array) -> str:
    """A column's values as text (NaN equal to NaN, any date range), dictionaries decoded."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column.to_string(window=10**6, container_window=10**6, skip_new_lines=True)


def _takeable(table: pa.Table) -> pa.Table:
    """View columns as plain strings and binaries: pyarrow has no take/filter for views."""
    plain = {"string_view": pa.large_string(), "binary_view": pa.large_binary()}
    for i, field in enumerate(table.schema):
        if str(field.type) in plain:
            table = table.set_column(i, field.name, table.column(i).cast(plain[str(field.type)]))
    return table


def check_columns_unchanged(output: Path, source_file: Path, partition_by: str | None) -> None:
    """One input file: every scored row's input columns come out with the values pyarrow reads
    from the file (what a writer's round trip changes, such as timestamp[s] stored as ms, is not
    batch-infer's doing)."""
    source = pq.read_table(source_file)
    manifest = json.loads((output / "_manifest.json").read_text())
    tables = [pq.read_table(output / entry["path"]) for entry in manifest["files"]]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return
    scored = _takeable(pa.concat_tables(tables, promote_options="permissive"))
    scored = scored.take(pc.sort_indices(scored.column("rid")))
    source = _takeable(source)
    source = source.filter(pc.is_in(source.column("rid"), value_set=scored.column("rid")))
    source = source.take(pc.sort_indices(source.column("rid")))
    for name in source.column_names:
        if name == partition_by:
            continue  # in the folder names, typed by the reader
        assert name in scored.column_names, f"input column {name!r} missing from the output"
        assert _comparable(scored.column(name)) == _comparable(source.column(name)), (
            f"column {name!r} ({source.schema.field(name).type}) changed: "
            f"{scored.schema.field(name).type}\n{scored.column(name)}\nwas\n{source.column(name)}"
        )


def fuzz_run(model: Path, files: list[FileSpec], options: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        root = Path(tmp) / "in"
        write_input(root, files)
        output = Path(tmp) / "out"
        spec = {
            "folder": str(root),
            "glob": str(root / "**" / "*.parquet"),
            "file": str(root / files[0].relative),
        }[options["spec"] if len(files) == 1 or options["spec"] != "file" else "folder"]
        args = ["--input", spec, "--model", str(model), "--output", str(output), "--workers", "1"]
        if options["batch_size"]:
            args += ["--batch-size", str(options["batch_size"])]
        if options["max_reject_rate"] is not None:
            args += ["--max-reject-rate", str(options["max_reject_rate"])]
        if options["partition_by"]:
            args += ["--partition-by", options["partition_by"]]
        note(f"batch-infer run {' '.join(args)}")
        for f in files:
            note(
                f"{f.relative} ({f.row_group_size}-row groups, empty group first: "
                f"{f.empty_group_first}, last: {f.empty_group_last}):\n{f.table}"
            )
        result = invoke(args)
        try:
            assert result.exit_code in ALLOWED_EXITS, describe(result)
            if result.exit_code == 0:
                check_success(result, output, sum(f.table.num_rows for f in files))
                if len(files) == 1:
                    check_columns_unchanged(
                        output, root / files[0].relative, options["partition_by"]
                    )
            else:
                check_failure(result, output)
        except AssertionError as failure:
            if KEEP:
                kept = Path(tempfile.mkdtemp(prefix="case-", dir=KEEP))
                shutil.copytree(root, kept / "in")
                shutil.copy(model, kept / model.name)
                command = " ".join(args).replace(str(root), str(kept / "in"))
                command = command.replace(str(model), str(kept / model.name))
                (kept / "command").write_text(command.replace(str(output), str(kept / "out")))
                (kept / "result").write_text(f"{failure}\n{describe(result)}")
                if os.environ.get("FUZZ_CONTINUE") == "1":
                    return
            raise


def _found(table: pa.Table, **options) -> tuple[list[FileSpec], dict]:
    """An input the fuzz once found a bug with, replayed on every run (``@example``)."""
    rid = pa.array(range(table.num_rows), pa.int64())
    spec = FileSpec("part-0.parquet", table.append_column("rid", rid), 1000, False, False)
    defaults = {"batch_size": None, "max_reject_rate": None, "partition_by": None}
    return [spec], {**defaults, "spec": "folder", **options}


FAR_FUTURE = pa.array([2**50, 0], pa.int64()).cast(pa.timestamp("ms", "UTC"))  # year 35,000
FOUND = {
    "numeric": [
        # a rejected row whose other columns hold a date Python cannot represent: exit 1
        _found(pa.table({"f0": [None, 1.0], "f1": [1.0, 2.0], "f2": [1.0, 2.0], "x": FAR_FUTURE})),
        # --partition-by such a column: exit 1
        _found(
            pa.table({"f0": [0.5, 1.0], "f1": [1.0, 2.0], "f2": [1.0, 2.0], "x": FAR_FUTURE}),
            partition_by="x",
        ),
    ],
    "text": [
        # a string_view column and a rejected row: exit 4, "the model failed"
        _found(pa.table({"txt": pa.array(["good", None], pa.string_view())}), max_reject_rate=1.0),
    ],
}


@pytest.mark.parametrize("contract", sorted(CONTRACTS))
def test_random_parquet_commits_every_row_or_fails_cleanly(fuzz_models, contract):
    def run(drawn):
        files, options = drawn
        fuzz_run(fuzz_models[contract], files, options)

    for found in FOUND.get(contract, []):
        run = example(drawn=found)(run)
    FUZZ(given(drawn=inputs(CONTRACTS[contract]))(run))()
