"""The docs site builds with --strict, and its generated pages say what the code and results say.

`mkdocs build --strict` fails on a broken link or anchor, a page missing from the nav or a nav
entry without its page, and on a generated part whose source is missing (docs/hooks.py).
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _text(page: Path) -> str:
    """The visible text of a built page's article, tags stripped, entities decoded."""
    source = page.read_text()
    start, end = source.find("<article"), source.find("</article>")
    return html.unescape(re.sub(r"<[^>]+>", "", source[start:end]))


def _hooks():
    spec = importlib.util.spec_from_file_location("_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    return out


def _commands() -> list[str]:
    """Every command of the Typer app, walked here independently of docs/hooks.py."""
    import typer

    from batch_infer.cli import app

    root = typer.main.get_command(app)
    found = []

    def walk(command, ctx, path):
        if not hasattr(command, "list_commands"):
            return
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            found.append(f"{path} {name}")
            walk(
                sub,
                sub.make_context(name, [], parent=ctx, resilient_parsing=True),
                path + " " + name,
            )

    walk(root, root.make_context("batch-infer", [], resilient_parsing=True), "batch-infer")
    return found


def test_cli_reference_lists_every_command_with_its_options(site):
    text = _text(site / "reference" / "cli" / "index.html")
    commands = _commands()
    assert {"batch-infer run", "batch-infer serve", "batch-infer validate"} <= set(commands)
    for command in commands:
        assert re.search(rf"^{re.escape(command)}\s*¶?$", text, re.MULTILINE), (
            f"{command} has no section in the CLI reference"
        )
        assert f"{command} [OPTIONS]" in text, f"{command}'s usage is missing"
    assert "--max-reject-rate" in text and "--http-port" in text


def test_configuration_page_lists_every_key(site):
    from batch_infer import RunConfig

    text = _text(site / "reference" / "config" / "index.html")
    for section in ("input", "model", "output"):
        model = RunConfig.model_fields[section].annotation
        for name in model.model_fields:
            assert f"{section}.{name}" in text, f"{section}.{name} missing from the config page"


def test_performance_page_shows_the_latest_results(site):
    results = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    date = results.get("date") or _hooks().bench_facts()["date"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}.*", date)
    text = _text(site / "performance" / "index.html")
    assert f"Latest results: {date}" in text
    # one row per target, each saying whether it is met
    assert text.count("✓ met") + text.count("✗ not met") >= len(results["results"])
    for case in results["results"]:
        assert case["case"] in text
    if (ROOT / "benchmarks" / "results" / "serve-latest.md").exists():
        assert "MLServer" in text  # the serving table, read from the bench's file at build time


def test_exit_codes_page_lists_every_exit_code(site):
    from batch_infer.errors import EXIT_CODES

    text = _text(site / "guarantees" / "index.html")
    table = text[text.index("Exit codes") :]
    for code in EXIT_CODES:
        assert re.search(rf"^\s*{code}\s*$", table, re.MULTILINE), f"exit code {code} missing"


def test_library_api_page_renders_the_public_functions(site):
    text = _text(site / "reference" / "api" / "index.html")
    for name in ("batch_infer.run", "batch_infer.validate", "RunConfig", "BatchInferError"):
        assert name in text


def test_readme_is_the_front_door():
    text = README.read_text()
    assert len(text.splitlines()) < 200
    assert "make run" in text and "make test" in text
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
