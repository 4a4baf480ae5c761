"""MkDocs hooks: the pages generated from the code and from the benchmark results.

A page asks for generated content with a marker on a line of its own, ``<!-- generated:NAME -->``;
``on_page_markdown`` replaces it. Nothing generated is committed: every build renders it again.

- ``cli``: the CLI reference, walked from the Typer app (``batch_infer.cli:app``).
- ``config``: every key of a config file, walked from the pydantic models (``RunConfig``).
- ``bench-summary``, ``bench-targets``, ``bench-cases``: ``make bench``'s latest results,
  from ``benchmarks/results/latest.json``, the targets and tables rendered by
  ``benchmarks/bench.py`` itself (``targets``, ``case_tables``), as it writes ``latest.md``.
- ``serve-results``: ``make bench-serve``'s latest table, read from
  ``benchmarks/results/serve-latest.md`` (its only output; there is no JSON of it yet).

An unknown marker, or a source that is missing, fails the build.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BENCH_JSON = RESULTS / "latest.json"
BENCH_MD = RESULTS / "latest.md"
SERVE_MD = RESULTS / "serve-latest.md"
MARKER = re.compile(r"^<!-- generated:([a-z-]+) -->$", re.MULTILINE)


class GeneratedPageError(PluginError):
    """A marker names nothing we generate, or what it is generated from is missing."""


# -- MkDocs events ------------------------------------------------------------------------------


def on_config(config: Any) -> Any:
    """Rebuild on `mkdocs serve` when the code or the results change."""
    for path in (ROOT / "batch_infer", RESULTS):
        if str(path) not in config.watch:
            config.watch.append(str(path))
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise GeneratedPageError(
                f"{page.file.src_uri}: no generated content called {name!r} "
                f"(known: {', '.join(sorted(GENERATORS))})"
            )
        return GENERATORS[name]().strip()

    return MARKER.sub(replace, markdown)


# -- the CLI reference --------------------------------------------------------------------------


def _root(prog: str) -> tuple[Any, Any]:
    """The app's click command and its context (typer may bring its own copy of click)."""
    import typer

    from batch_infer.cli import app

    root = typer.main.get_command(app)
    return root, root.make_context(prog, [], resilient_parsing=True)


def _context(command: Any, name: str, parent: Any) -> Any:
    return command.make_context(name, [], parent=parent, resilient_parsing=True)


def _is_group(command: Any) -> bool:
    return hasattr(command, "list_commands") and hasattr(command, "get_command")


def cli_reference(prog: str = "batch-infer") -> str:
    """Every command of the Typer app: what it does, its usage, arguments and options."""
    root, ctx = _root(prog)
    parts = [_command_doc(root, ctx, prog, level=2)]
    parts += _subcommands(root, ctx, prog, level=2)
    return "\n\n".join(parts)


def cli_commands(prog: str = "batch-infer") -> list[str]:
    """The full names of every command the app has (``batch-infer run``, ...)."""
    root, ctx = _root(prog)
    names: list[str] = []

    def walk(command: Any, ctx: Any, path: str) -> None:
        if _is_group(command):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is None or sub.hidden:
                    continue
                names.append(f"{path} {name}")
                walk(sub, _context(sub, name, ctx), f"{path} {name}")

    walk(root, ctx, prog)
    return names


def _subcommands(group: Any, ctx: Any, path: str, level: int) -> list[str]:
    parts: list[str] = []
    if not _is_group(group):
        return parts
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub_ctx = _context(command, name, ctx)
        full = f"{path} {name}"
        parts.append(_command_doc(command, sub_ctx, full, level=level + 1))
        parts += _subcommands(command, sub_ctx, full, level + 1)
    return parts


def _command_doc(command: Any, ctx: Any, full_name: str, level: int) -> str:
    text, example = _help_text(command.help or "")
    usage = " ".join([full_name, *command.collect_usage_pieces(ctx)])
    lines = [f"{'#' * level} `{full_name}`", "", *text, "```", usage, "```", ""]
    arguments, options = [], []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        (arguments if param.param_type_name == "argument" else options).append(record)
    for title, records in (("Arguments", arguments), ("Options", options)):
        if not records:
            continue
        lines += [f"**{title}**", "", f"| {title[:-1].lower()} | description |", "|---|---|"]
        for spelling, help_text in records:
            lines.append(f"| {_code(spelling)} | {_cell(help_text)} |")
        lines.append("")
    if example:
        lines += ["**Example**", "", "```bash", example, "```", ""]
    if _is_group(command):
        lines += ["**Commands**", ""]
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                anchor = _anchor(f"{full_name} {name}")
                lines.append(f"- [`{name}`](#{anchor}): {_cell(sub.get_short_help_str(100))}")
        lines.append("")
    return "\n".join(lines).rstrip()


def _help_text(text: str) -> tuple[list[str], str]:
    """A docstring's paragraphs as Markdown lines, and its ``Example:`` command if it has one."""
    lines: list[str] = []
    example = ""
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        paragraph = " ".join(paragraph.split())
        if paragraph.startswith("Example:"):
            example = paragraph[len("Example:") :].strip()
        elif paragraph:
            lines += [_escape(paragraph), ""]
    return lines, example


def _anchor(title: str) -> str:
    """The id MkDocs' toc gives a heading ``` `title` ```."""
    return re.sub(r"[^\w\- ]", "", title.lower()).strip().replace(" ", "-")


def _escape(text: str) -> str:
    """Markdown text: ``<...>`` outside code spans shown, not taken for HTML."""
    pieces = re.split(r"(`[^`]*`)", text)
    return "".join(
        p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in pieces
    )


def _code(text: str) -> str:
    # a pipe inside a table cell ends the cell, even in a code span: show it as an entity
    return (
        "<code>"
        + text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "&#124;")
        + "</code>"
    )


def _cell(text: str) -> str:
    """Text for a table cell: code spans as HTML (a pipe in them must not end the cell)."""
    pieces = re.split(r"(`[^`]*`)", " ".join(text.split()))
    return "".join(
        _code(p[1:-1]) if p.startswith("`") and len(p) > 1 else _escape(p).replace("|", "&#124;")
        for p in pieces
    )


# -- the configuration file ------------------------------------------------------------------


def config_reference() -> str:
    """Every key of a config file, walked from the pydantic models of a run (``RunConfig``)."""
    from batch_infer import RunConfig

    tables: list[str] = []
    top: list[tuple[str, Any]] = []
    for name, field in RunConfig.model_fields.items():
        section = _section_model(field.annotation)
        if section is None:
            top.append((name, field))
        else:
            tables.append(_config_table(name, section, field.is_required()))
    intro = _config_rows("", top)
    return "\n\n".join(["### Top level", intro, *tables])


def _section_model(annotation: Any) -> Any:
    """The pydantic model a field holds (``ServeSection | None`` too), or None."""
    import types
    from typing import Union, get_args, get_origin

    from pydantic import BaseModel

    candidates = [annotation]
    if get_origin(annotation) in (Union, types.UnionType):
        candidates = [a for a in get_args(annotation) if a is not type(None)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _config_table(prefix: str, model: Any, required: bool) -> str:
    title = f"### `{prefix}`" + ("" if required else " (optional)")
    doc = " ".join((model.__doc__ or "").split())
    direct, nested = [], []
    for name, field in model.model_fields.items():
        section = _section_model(field.annotation)
        if section is None:
            direct.append((name, field))
        else:
            nested.append(_config_table(f"{prefix}.{name}", section, field.is_required()))
    parts = [title, _escape(doc), _config_rows(prefix, direct)] + nested
    return "\n\n".join(p for p in parts if p)


def _config_rows(prefix: str, fields: list[tuple[str, Any]]) -> str:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in fields:
        key = f"{prefix}.{name}" if prefix else name
        lines.append(
            f"| `{key}` | {_cell(_type_name(field.annotation))} | {_default(field)} "
            f"| {_cell(field.description or '')} |"
        )
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    from typing import Literal, get_args, get_origin

    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{v}`" for v in get_args(annotation))
    text = getattr(annotation, "__name__", None) if get_origin(annotation) is None else None
    text = text or str(annotation)
    text = re.sub(r"\b(typing|datetime|pathlib)\.", "", text)
    return "`" + text.replace("NoneType", "None") + "`"


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if value is None:
        return "—"
    return _code(json.dumps(value, default=str))


# -- make bench ---------------------------------------------------------------------------------


def bench_results() -> dict[str, Any]:
    if not BENCH_JSON.exists():
        raise GeneratedPageError(f"{BENCH_JSON.relative_to(ROOT)} is missing: run `make bench`")
    return json.loads(BENCH_JSON.read_text())


def bench_facts() -> dict[str, str]:
    """Date, machine and command of the latest results.

    Taken from the JSON where it says them; otherwise the date is the day the file was last
    committed (or written, if it has changes not committed yet), and the machine and command
    are those that ``benchmarks/bench.py`` wrote into ``latest.md`` in the same run.
    """
    data = bench_results()
    facts = {key: str(data[key]) for key in ("date", "machine", "command") if data.get(key)}
    if "date" not in facts:
        facts["date"] = _file_date(BENCH_JSON)
    header = BENCH_MD.read_text() if BENCH_MD.exists() else ""
    if "machine" not in facts:
        found = re.search(r"^Machine: ([^;\n]+)", header, re.MULTILINE)
        facts["machine"] = found.group(1).strip() if found else "not recorded"
    if "command" not in facts:
        found = re.search(r"^Command: (.+?)\.?$", header, re.MULTILINE)
        facts["command"] = found.group(1).strip() if found else "`make bench`"
    return facts


def _file_date(path: Path) -> str:
    """The UTC day the file was last committed; its modification day if it has local changes."""
    try:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        committed = subprocess.run(
            ["git", "log", "-1", "--format=%ct", "--", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        dirty, committed = "", ""
    stamp = int(committed) if committed and not dirty else path.stat().st_mtime
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d")


def _bench_module() -> Any:
    """benchmarks/bench.py, so the targets are the ones the bench itself checks."""
    spec = importlib.util.spec_from_file_location(
        "_bench_for_docs", ROOT / "benchmarks" / "bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def bench_summary() -> str:
    facts = bench_facts()
    command = facts["command"]
    command = command if command.startswith("`") else f"`{command}`"
    runs = bench_results().get("runs")
    medians = "" if not runs else ", one run each" if runs == 1 else f", medians of {runs} runs"
    return (
        f"Latest results: **{facts['date']}**, {command}{medians}, on {facts['machine']} "
        f"(from `benchmarks/results/latest.json`)."
    )


def bench_targets() -> str:
    goals = _bench_module().targets(bench_results())
    lines = ["| target | figure | met |", "|---|---|:---:|"]
    for goal, measured, ok in goals:
        lines.append(f"| {_cell(goal)} | {_cell(measured)} | {'✓ met' if ok else '✗ not met'} |")
    return "\n".join(lines)


def bench_cases() -> str:
    """The bench's own tables of the results (``bench.case_tables``), so the page and
    ``latest.md`` show the same figures; it reads older results files too."""
    return _bench_module().case_tables(bench_results())


def serve_results() -> str:
    if not SERVE_MD.exists():
        raise GeneratedPageError(f"{SERVE_MD.relative_to(ROOT)} is missing: run `make bench-serve`")
    text = SERVE_MD.read_text()
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):  # its title; the page has its own
        lines = lines[1:]
    # its headings, if any, below the page's own
    return "\n".join("###" + line if line.startswith("# ") else line for line in lines)


GENERATORS = {
    "cli": cli_reference,
    "config": config_reference,
    "bench-summary": bench_summary,
    "bench-targets": bench_targets,
    "bench-cases": bench_cases,
    "serve-results": serve_results,
}
