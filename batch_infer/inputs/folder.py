"""A folder (or file, or glob) of Parquet files as an input: plan its fragments, read them.

Planning reads every footer up front, so a broken file fails the run before any scoring; the
column types of all files are unified losslessly or refused. ``read_fragment`` reads one row
group of any Parquet data file, so table inputs, whose data files are Parquet, use it too.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..config import InputConfig
from ..errors import InputError, first_line, from_store
from .base import Fragment, InputFile, InputPlan
from .where import apply_where, parse_where, prune

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
_GLOB_CHARS = re.compile(r"[*?\[]")


def has_magic(path: str) -> bool:
    """Whether a path is a glob pattern (the characters fsspec's glob expands)."""
    return _GLOB_CHARS.search(path) is not None


def plan_folder(config: InputConfig) -> InputPlan:
    """Resolve the input URL to files, read every footer and unify the schema.

    With ``--where``, files whose hive keys cannot match are dropped before their footers are
    read; the rows of the others are filtered as they are read (``InputPlan.row_filter``).
    """
    where = parse_where(config.where)  # a syntax error before any listing
    fs, path = storage.resolve(config.path, config.storage_options)
    root, paths = _list_files(fs, path, config.path)
    keys = {
        p: _hive_keys(posixpath.relpath(posixpath.dirname(p), root) if root else "") for p in paths
    }
    partition_schema = _partition_schema([keys[p] for p in paths])
    listed = len(paths)
    if where is not None:
        paths = prune(where, paths, [keys[p] for p in paths], partition_schema)
    versions = {p: storage.file_version(fs, p) for p in paths}
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(paths)))) as pool:
        metadatas = list(pool.map(lambda p: read_footer(fs, p), paths))
    files = [
        InputFile(
            path=p,
            url=storage.display(fs, p),
            relative_path=posixpath.relpath(p, root) if root else posixpath.basename(p),
            size=versions[p][0],
            version=versions[p][1],
            metadata=meta,
            partition=keys[p],
        )
        for p, meta in zip(paths, metadatas, strict=True)
    ]
    schema = unify_schema(files, partition_schema)
    lossy = lossy_columns(files, schema)
    if lossy and not config.allow_lossy_types:
        raise lossy_error(files, schema, lossy)
    files = [
        dataclasses.replace(f, lossy_columns=frozenset(lossy[f])) if f in lossy else f
        for f in files
    ]
    files, where_facts = apply_where(where, files, schema, partition_schema, listed - len(files))
    scanned = path if listed == 1 and paths[0] == path else root
    return InputPlan(
        fs=fs,
        root=storage.display(fs, scanned),
        files=files,
        schema=schema,
        partition_schema=partition_schema,
        **where_facts,
    )


def read_fragment(
    fs: fsspec.AbstractFileSystem,
    fragment: Fragment,
    schema: pa.Schema,
    partition_schema: pa.Schema,
    batch_size: int | None = None,
    use_threads: bool = True,
) -> Iterator[pa.RecordBatch]:
    """Stream one row group as record batches laid out in the plan's unified ``schema``.

    ``use_threads`` decodes columns on pyarrow's pool; turn it off when fragments already run
    side by side, where it only adds contention.
    """
    file = fragment.file
    try:
        # pre_buffer=False: this generator runs on one of Arrow's IO threads (ds.write_dataset
        # reads its input there); pre-buffered reads are IO-pool tasks of their own, and with
        # as many fragments in flight as IO threads (8) every thread waits for reads none is
        # free to run: the run hangs.
        parquet = pq.ParquetFile(
            file.path,
            filesystem=storage.arrow_filesystem(fs),
            metadata=file.metadata,
            pre_buffer=False,
        )
        for batch in parquet.iter_batches(
            batch_size=batch_size or fragment.batch_rows(),
            row_groups=[fragment.row_group],
            use_threads=use_threads,
        ):
            yield _conform(batch, schema, file, partition_schema)
    except (pa.ArrowException, OSError) as exc:
        if (store_error := from_store(exc)) is not None:
            raise store_error from None
        raise InputError(
            f"cannot read {fragment.describe()}: {first_line(exc)}",
            "the file is corrupt or changed while running; replace it or remove it from the input",
        ) from None


def _conform(
    batch: pa.RecordBatch, schema: pa.Schema, file: InputFile, partition_schema: pa.Schema
) -> pa.RecordBatch:
    """Put a file's batch in the plan's column order, adding hive keys and columns it lacks."""
    columns = []
    for target in schema:
        index = batch.schema.get_field_index(target.name)
        if index >= 0:
            column = batch.column(index)
            if not column.type.equals(target.type):  # unified across writers (see unify_schema)
                column = _cast(column, target, file)
            columns.append(column)
        elif target.name in partition_schema.names:
            value = file.partition.get(target.name)
            scalar = pa.scalar(value, pa.string()).cast(target.type) if value is not None else None
            columns.append(
                pa.array([scalar.as_py() if scalar else None] * batch.num_rows, target.type)
            )
        else:
            columns.append(pa.nulls(batch.num_rows, target.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _cast(column: pa.Array, target: pa.Field, file: InputFile) -> pa.Array:
    """A file's column in the unified type; checked unless the config accepted the loss."""
    safe = target.name not in file.lossy_columns
    try:
        return column.cast(target.type, safe=safe)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(
            f"column {target.name!r} of {file.url} cannot be read as {target.type}: "
            f"{first_line(exc)}",
            "write the column with one type in every file, or set input.allow_lossy_types: true",
        ) from None


def _list_files(fs: fsspec.AbstractFileSystem, path: str, url: str) -> tuple[str, list[str]]:
    """Return (root used for hive keys and relative names, sorted data files)."""
    if has_magic(path):
        matched = fs.glob(path)
        root = _glob_root(path)
        files = []
        for match in matched:
            if posixpath.basename(match).startswith((".", "_")):
                continue  # _SUCCESS, _manifest.json, .crc: never data, as in a directory
            files.extend(_data_files(fs, match) if fs.isdir(match) else [match])
    elif fs.isdir(path):
        root = path.rstrip("/")
        files = _data_files(fs, root)
    elif fs.isfile(path):
        root = posixpath.dirname(path)
        files = [path]
    else:
        raise InputError(
            f"input {url!r} does not exist", "check --input (a file, directory or glob)"
        )
    files = sorted(set(files))
    if not files:
        raise InputError(
            f"input {url!r} matches no Parquet file",
            "check --input; a directory is searched recursively, a glob like 'data/*.parquet' is matched as is",
        )
    return root, files


def _data_files(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    """Every file under ``directory`` except hidden and ``_``-prefixed ones (``_SUCCESS``, ``.crc``)."""
    found = []
    for candidate in fs.find(directory):
        relative = posixpath.relpath(candidate, directory)
        if any(part.startswith((".", "_")) for part in relative.split("/")):
            continue
        found.append(candidate)
    return found


def _glob_root(pattern: str) -> str:
    parts = []
    for part in pattern.split("/"):
        if has_magic(part):
            break
        parts.append(part)
    return "/".join(parts).rstrip("/")


def read_footer(fs: fsspec.AbstractFileSystem, path: str) -> pq.FileMetaData:
    url = storage.display(fs, path)
    try:
        return pq.ParquetFile(path, filesystem=storage.arrow_filesystem(fs)).metadata
    except (pa.ArrowException, OSError) as exc:
        if (store_error := from_store(exc)) is not None:
            raise store_error from None
        raise InputError(
            f"{url} is not a readable Parquet file: {first_line(exc)}",
            "replace the file or remove it from the input (hidden and _-prefixed files are skipped)",
        ) from None


def _hive_keys(relative_dir: str) -> dict[str, str | None]:
    keys: dict[str, str | None] = {}
    for part in relative_dir.split("/"):
        if "=" in part and not part.startswith("="):
            key, value = part.split("=", 1)
            value = unquote(value)
            keys[key] = None if value == HIVE_NULL else value
    return keys


def _partition_schema(partitions: list[dict[str, str | None]]) -> pa.Schema:
    """Hive keys present in every file's path; int64 when every value is an integer, else string."""
    if not partitions:
        return pa.schema([])
    common = set(partitions[0])
    for keys in partitions[1:]:
        common &= set(keys)
    fields = []
    for key in partitions[0]:
        if key not in common:
            continue
        values = [keys[key] for keys in partitions if keys[key] is not None]
        is_int = bool(values) and all(re.fullmatch(r"-?(0|[1-9][0-9]{0,17})", v) for v in values)
        fields.append(pa.field(key, pa.int64() if is_int else pa.string()))
    return pa.schema(fields)


def unify_schema(files: list[InputFile], partition_schema: pa.Schema) -> pa.Schema:
    """One schema for all files: first file's column order, then columns only later files have.

    Writers differ in how they store the same column: pandas writes a Categorical as a
    dictionary column, polars and Spark as plain strings; one writer uses string, another
    large_string. Such columns unify to the plain, widest type (values are what matter).
    """
    schemas = [f.schema.remove_metadata() for f in files]
    mixed = _dictionary_mixed(schemas)
    if mixed:
        schemas = [_decoded(schema, mixed) for schema in schemas]
    schema = schemas[0]
    for index, file_schema in enumerate(schemas[1:], start=1):
        try:
            schema = pa.unify_schemas([schema, file_schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise _incompatible(files, schemas, index, schema, exc) from None
    for key in partition_schema:
        if key.name not in schema.names:
            schema = schema.append(key)
    return _without_views(schema)


def _without_views(schema: pa.Schema) -> pa.Schema:
    """string_view/binary_view read as large_string/large_binary: same values, and Arrow's
    take/filter kernels (rejects, partitioning) exist for them."""
    plain = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}
    return pa.schema([f.with_type(plain.get(f.type, f.type)) for f in schema])


def _dictionary_mixed(schemas: list[pa.Schema]) -> set[str]:
    """Columns that are dictionary-encoded in some files and not (or differently) in others."""
    types: dict[str, set[str]] = {}
    for schema in schemas:
        for column in schema:
            types.setdefault(column.name, set()).add(str(column.type))
    return {
        f.name
        for schema in schemas
        for f in schema
        if pa.types.is_dictionary(f.type) and len(types[f.name]) > 1
    }


def _decoded(schema: pa.Schema, names: set[str]) -> pa.Schema:
    return pa.schema(
        [
            f.with_type(f.type.value_type)
            if f.name in names and pa.types.is_dictionary(f.type)
            else f
            for f in schema
        ]
    )


def _incompatible(
    files: list[InputFile],
    schemas: list[pa.Schema],
    index: int,
    unified: pa.Schema,
    exc: Exception,
) -> InputError:
    """Name the column, both files and both types that no type can hold together."""
    fix = "make the column types agree across files, or score the files separately"
    for column in schemas[index]:
        if column.name not in unified.names:
            continue
        try:
            pa.unify_schemas(
                [pa.schema([unified.field(column.name)]), pa.schema([column])],
                promote_options="permissive",
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            other = next(
                (
                    (f, s.field(column.name).type)
                    for f, s in zip(files[:index], schemas[:index], strict=True)
                    if column.name in s.names and not s.field(column.name).type.equals(column.type)
                ),
                (files[0], unified.field(column.name).type),
            )
            return InputError(
                f"column {column.name!r} is {column.type} in {files[index].url} but "
                f"{other[1]} in {other[0].url}: no type holds both",
                fix,
            )
    return InputError(
        f"{files[index].url} has a schema incompatible with {files[0].url}: {first_line(exc)}", fix
    )


def lossy_columns(files: list[InputFile], schema: pa.Schema) -> dict[InputFile, list[str]]:
    """Per file, the columns whose values the unified type cannot all hold exactly."""
    found: dict[InputFile, list[str]] = {}
    for f in files:
        for column in f.schema:
            if column.name in schema.names and not lossless(
                column.type, schema.field(column.name).type
            ):
                found.setdefault(f, []).append(column.name)
    return found


def lossy_error(
    files: list[InputFile], schema: pa.Schema, lossy: dict[InputFile, list[str]]
) -> InputError:
    """The first lossy column: the file whose values would change, and a file that made it so."""
    file, name = next((f, names[0]) for f, names in lossy.items())
    own, unified = file.schema.field(name).type, schema.field(name).type
    others = [f for f in files if name in f.schema.names and f.schema.field(name).type != own]
    other = next((f for f in others if f.schema.field(name).type == unified), others[0])
    return InputError(
        f"column {name!r} is {own} in {file.url} but {other.schema.field(name).type} in "
        f"{other.url}: reading both as {unified} would change values of {file.url}",
        "write the column with one type in every file (cast it where the files are written), "
        "or set input.allow_lossy_types: true (BATCH_INFER_INPUT__ALLOW_LOSSY_TYPES=true) to "
        f"read it as {unified} anyway",
    )


_UNITS = {"s": 0, "ms": 1, "us": 2, "ns": 3}


def lossless(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether every value of ``source`` is exactly a value of ``target`` (same kind of value).

    Widening within a kind is lossless (int32 to int64, uint32 to int64, float32 to float64,
    string to large_string, a finer timestamp unit, a dictionary to its values); a change of
    kind (any integer to a float, a float to a decimal) or of range (uint64 to int64) is not.
    """
    if source.equals(target) or pa.types.is_null(source):
        return True
    if pa.types.is_dictionary(source):
        return lossless(source.value_type, target)
    if pa.types.is_dictionary(target):
        return lossless(source, target.value_type)
    if pa.types.is_integer(source) and pa.types.is_integer(target):
        if pa.types.is_signed_integer(source) == pa.types.is_signed_integer(target):
            return target.bit_width >= source.bit_width
        return pa.types.is_unsigned_integer(source) and target.bit_width > source.bit_width
    if pa.types.is_floating(source) and pa.types.is_floating(target):
        return target.bit_width >= source.bit_width
    if pa.types.is_decimal(target) and (pa.types.is_decimal(source) or pa.types.is_integer(source)):
        digits, scale = (
            (source.precision - source.scale, source.scale)
            if pa.types.is_decimal(source)
            else (len(str(2 ** (source.bit_width - pa.types.is_signed_integer(source)))), 0)
        )
        return target.scale >= scale and target.precision - target.scale >= digits
    if (pa.types.is_string(source) or pa.types.is_string_view(source)) and pa.types.is_large_string(
        target
    ):
        return True
    if (pa.types.is_binary(source) or pa.types.is_binary_view(source)) and pa.types.is_large_binary(
        target
    ):
        return True
    if pa.types.is_timestamp(source) and pa.types.is_timestamp(target):
        return source.tz == target.tz and _UNITS[target.unit] >= _UNITS[source.unit]
    if pa.types.is_date32(source) and pa.types.is_date64(target):
        return True
    if (pa.types.is_time(source) and pa.types.is_time(target)) or (
        pa.types.is_duration(source) and pa.types.is_duration(target)
    ):
        return _UNITS[target.unit] >= _UNITS[source.unit]
    if _is_list(source) and _is_list(target):
        return lossless(source.value_type, target.value_type)
    if pa.types.is_map(source) and pa.types.is_map(target):
        return lossless(source.key_type, target.key_type) and lossless(
            source.item_type, target.item_type
        )
    if pa.types.is_struct(source) and pa.types.is_struct(target):
        fields = {target.field(i).name: target.field(i).type for i in range(target.num_fields)}
        return all(
            source.field(i).name in fields
            and lossless(source.field(i).type, fields[source.field(i).name])
            for i in range(source.num_fields)
        )
    return False


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
