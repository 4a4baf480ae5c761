"""The run report as one self-contained HTML page: inline CSS and SVG, no script, no network.

It opens from a laptop, an object store's console or an e-mail attachment the same way, years
later. Every string in it (column names, paths, error messages) is user data and is escaped.
"""

from __future__ import annotations

import datetime as dt
import math
from html import escape
from typing import Any

import numpy as np

from .datasets import unpinned
from .statistics import DRIFT_THRESHOLD, bin_edges, drift

DISPLAY_BINS = 40  # bars of a numeric histogram
TOP_VALUES = 12  # bars of a categorical one
LIST_OPEN = 8  # longer lists (inputs, partitions) start folded
PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#9d755d"]
STATUS_COLOURS = {"committed": "#1a7f37", "failed": "#cf222e", "skipped": "#6e7781"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
 background:#f6f8fa;margin:0}
main{max-width:1120px;margin:0 auto;padding:20px}
header{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px;margin-bottom:16px}
h1{font-size:20px;margin:0 0 6px}h2{font-size:16px;margin:0 0 10px}h3{font-size:14px;margin:8px 0 4px}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 20px;margin-bottom:16px}
.badge{display:inline-block;color:#fff;border-radius:12px;padding:2px 12px;font-weight:600;
 vertical-align:middle;margin-left:8px;font-size:13px}
.muted{color:#656d76}.error{background:#ffebe9;border:1px solid #ff8182;border-radius:6px;
 padding:8px 12px;margin-top:10px;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:13px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;
 border-bottom:1px solid #eaeef2;vertical-align:top}th{color:#656d76;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.kv th{width:180px}.cols{display:grid;grid-template-columns:repeat(auto-fill,minmax(500px,1fr));gap:12px}
.drift{background:#cf222e;color:#fff;border-radius:4px;padding:0 6px;font-weight:600}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;word-break:break-all}
svg text{font:11px system-ui,sans-serif;fill:#57606a}details summary{cursor:pointer;color:#0969da}
.legend span{display:inline-block;margin-right:14px}.swatch{display:inline-block;width:10px;
 height:10px;border-radius:2px;margin-right:4px;vertical-align:baseline}
"""


def render(
    facts: dict[str, Any],
    manifest: dict[str, Any] | None = None,
    baseline: dict[str, Any] | None = None,
) -> str:
    """The report of one run: ``facts`` is ``RunFacts.to_dict()``, ``manifest`` the committed
    ``_manifest.json`` (None for a failed run), ``baseline`` the previous committed run's
    ``statistics`` (None when there is none)."""
    manifest = manifest or {}
    facts = {**facts, **_from_manifest(facts, manifest)}
    statistics = facts.get("statistics") or {}
    psi = facts.get("drift")
    if psi is None and baseline and statistics:
        psi = drift(statistics, baseline)
    status = str(facts.get("status") or "running")
    title = f"batch-infer · {facts.get('job') or 'run'} · {status}"
    body = [
        _header(facts, status),
        _facts_section(facts, manifest),
        _model_section(manifest),
        _inputs_section(facts, manifest),
        _timing_section(facts),
        _scores_section(statistics, baseline, psi),
        _throughput_section(facts),
        _partitions_section(statistics, facts),
        _features_section(statistics, baseline, psi, facts),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}"
        f'<p class="muted">Written by batch-infer {_e(manifest.get("batch_infer_version", ""))}'
        " · self-contained: no script, no network.</p></main></body></html>\n"
    )


def _from_manifest(facts: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """Counts the manifest knows when the facts were saved before the commit counted them."""
    known = {
        "rows_scored": manifest.get("rows_out"),
        "rows_rejected": manifest.get("rows_rejected"),
        "files_out": len(manifest.get("files") or []) or None,
        "bytes_written": sum(int(f.get("bytes") or 0) for f in manifest.get("files") or []) or None,
    }
    return {k: v for k, v in known.items() if v and not facts.get(k)}


# ---------------------------------------------------------------- sections


def _header(facts: dict[str, Any], status: str) -> str:
    colour = STATUS_COLOURS.get(status, "#9a6700")
    exit_code = facts.get("exit_code")
    lines = [
        f"<header><h1>{_e(facts.get('job') or 'batch-infer run')}"
        f'<span class="badge" style="background:{colour}">{_e(status)}</span></h1>',
        f'<div class="mono">{_e(facts.get("output", ""))}</div>',
        '<div class="muted">',
        f"run {_e(facts.get('run_id') or '–')}",
        f" · started {_e(_when(facts.get('started_at')))}",
        f" · {_e(_seconds(facts.get('seconds')))}",
        f" · exit code {_e(exit_code if exit_code is not None else '–')}</div>",
    ]
    if facts.get("error"):
        lines.append(f'<div class="error">{_e(facts["error"])}</div>')
    lines.append("</header>")
    return "".join(lines)


def _facts_section(facts: dict[str, Any], manifest: dict[str, Any]) -> str:
    engine = manifest.get("engine") or {}
    rows = [
        ("Output", _code(facts.get("output"))),
        ("Run id", _e(facts.get("run_id") or "–")),
        ("Run date", _e(facts.get("run_date") or "–")),
        ("Status", _e(f"{facts.get('status')} (exit code {facts.get('exit_code')})")),
        ("Started", _e(_when(facts.get("started_at")))),
        ("Finished", _e(_when(facts.get("finished_at")))),
        ("Duration", _e(_seconds(facts.get("seconds")))),
        (
            "Rows",
            _e(
                f"{_n(facts.get('rows_in'))} in · {_n(facts.get('rows_scored'))} scored · "
                f"{_n(facts.get('rows_rejected'))} rejected"
            ),
        ),
        (
            "Files",
            _e(
                f"{_n(facts.get('files_in'))} in ({_n(facts.get('fragments'))} row groups) · "
                f"{_n(facts.get('files_out'))} out"
            ),
        ),
        (
            "Bytes",
            _e(
                f"{_bytes(facts.get('bytes_read'))} read · {_bytes(facts.get('bytes_written'))} written"
            ),
        ),
        ("Peak memory", _e(_bytes(facts.get("peak_rss_bytes")))),
        ("Engine", _e(_engine(engine, facts))),
        ("Runtime", _e(manifest.get("runtime") or facts.get("runtime") or "–")),
        ("Drift baseline", _e(facts.get("baseline_run_id") or "no previous committed run")),
        (
            "Versions",
            _e(
                f"batch-infer {manifest.get('batch_infer_version', '–')} · scikit-learn "
                f"{manifest.get('sklearn_version', '–')}"
            ),
        ),
    ]
    if manifest.get("committed_at"):
        rows.insert(6, ("Committed", _e(manifest["committed_at"])))
    read, committed = _table_versions(facts, manifest)
    if committed:
        rows.insert(1, ("Table commit", _e(committed)))
    if read:
        rows.insert(0, ("Input table", _code(read)))
    return _section("Run", _kv(rows))


def _table_versions(facts: dict[str, Any], manifest: dict[str, Any]) -> tuple[str, str]:
    """The table read, at which version or snapshot, and the output table's commit (a run
    report shows both, so a table's row can be traced to the exact commits on either side)."""
    table = facts.get("input_table") or ((manifest.get("config") or {}).get("input") or {}).get(
        "path", ""
    )
    version = facts.get("input_version") or manifest.get("input_version") or {}
    read = ""
    if version:
        kind = "version" if "version" in version else "snapshot"
        read = f"{unpinned(table) or version.get('format', 'table')} at {kind} {version.get(kind)}"
    return read, str(facts.get("table_commit") or manifest.get("table_commit") or "")


def _model_section(manifest: dict[str, Any]) -> str:
    model = manifest.get("model")
    if not model:
        return ""
    rows = [
        ("Path", _code(model.get("path"))),
        ("Version", _e(model.get("version"))),
        ("sha256", _code(model.get("sha256"))),
        ("Kind", _e(model.get("kind"))),
        ("Classes", _e(", ".join(map(str, model.get("classes") or [])) or "–")),
        ("Methods", _e(", ".join(model.get("methods") or []))),
        ("Saved with", _e(f"scikit-learn {model.get('saved_sklearn_version') or '–'}")),
    ]
    if model.get("scaler_path"):
        rows.append(
            ("Scaler", _code(f"{model['scaler_path']} (sha256 {model.get('scaler_sha256')})"))
        )
    contract = (model.get("contract") or {}).get("features") or []
    keys = [k for k in dict.fromkeys(k for f in contract for k in f) if k != "name"]
    table = ""
    if contract:
        head = "".join(f"<th>{_e(k)}</th>" for k in ["feature", *keys])
        body = "".join(
            "<tr>"
            + f"<td><code>{_e(f.get('name'))}</code></td>"
            + "".join(f"<td>{_e(_plain(f.get(k, '')))}</td>" for k in keys)
            + "</tr>"
            for f in contract
        )
        table = f"<h3>Input contract</h3><table><tr>{head}</tr>{body}</table>"
    return _section("Model", _kv(rows) + table)


def _inputs_section(facts: dict[str, Any], manifest: dict[str, Any]) -> str:
    inputs = manifest.get("inputs")
    if inputs:
        head = '<tr><th>file</th><th class="num">rows</th><th class="num">row groups</th><th class="num">bytes</th></tr>'
        rows = [
            f"<tr><td><code>{_e(f.get('path'))}</code></td><td class=num>{_n(f.get('rows'))}</td>"
            f"<td class=num>{_n(f.get('row_groups'))}</td><td class=num>{_e(_bytes(f.get('bytes')))}</td></tr>"
            for f in inputs
        ]
    else:
        head = "<tr><th>file</th></tr>"
        rows = [f"<tr><td><code>{_e(url)}</code></td></tr>" for url in facts.get("inputs") or []]
    if not rows:
        return ""
    return _section(f"Inputs ({len(rows)} files)", _folded(head, rows, "files"))


def _timing_section(facts: dict[str, Any]) -> str:
    stages = {k: float(v) for k, v in (facts.get("stage_seconds") or {}).items()}
    total = sum(stages.values())
    if total <= 0:
        return _section("Timing by stage", '<p class="muted">no stage finished.</p>')
    width, height, x = 1000, 34, 0.0
    parts, legend = [], []
    for i, (name, seconds) in enumerate(stages.items()):
        colour = PALETTE[i % len(PALETTE)]
        w = max(seconds / total * width, 1.0)
        parts.append(
            f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="{height}" fill="{colour}">'
            f"<title>{_e(name)}: {seconds:.3f} s</title></rect>"
        )
        x += w
        legend.append(
            f'<span><i class="swatch" style="background:{colour}"></i>{_e(name)} '
            f"{seconds:.2f} s ({seconds / total:.0%})</span>"
        )
    svg = _svg(width, height, "".join(parts), "time per stage", fluid=True)
    return _section("Timing by stage", svg + f'<div class="legend">{"".join(legend)}</div>')


def _scores_section(
    statistics: dict[str, Any], baseline: dict[str, Any] | None, psi: dict | None
) -> str:
    outputs = statistics.get("outputs") or {}
    if not outputs:
        return _section("Score distribution", _no_statistics(statistics))
    cards = []
    for name, sketch in outputs.items():
        base = ((baseline or {}).get("outputs") or {}).get(name)
        plot = _distribution(sketch, base, 500, 170)
        note = _psi_note(name, psi) if psi and name in psi else ""
        cards.append(f"<div><h3><code>{_e(name)}</code> {note}</h3>{plot}</div>")
    legend = ""
    if baseline:
        legend = (
            '<div class="legend"><span><i class="swatch" style="background:#4c78a8"></i>this run'
            '</span><span><i class="swatch" style="background:#f58518"></i>previous run</span></div>'
        )
    return _section("Score distribution", f'<div class="cols">{"".join(cards)}</div>{legend}')


def _throughput_section(facts: dict[str, Any]) -> str:
    points = [(float(s), float(r)) for s, r in facts.get("throughput") or []]
    if len(points) < 1:
        return _section("Throughput", '<p class="muted">no rows finished.</p>')
    plan = float((facts.get("stage_seconds") or {}).get("plan") or 0)
    start = [(0.0, 0.0)] + ([(plan, 0.0)] if 0 < plan < points[0][0] else [])
    points = start + points  # no row is done before scoring starts
    width, height, left, bottom = 1000, 200, 70, 24
    max_s = max(p[0] for p in points) or 1.0
    max_rows = max(p[1] for p in points) or 1.0
    xy = [
        (left + s / max_s * (width - left - 10), (height - bottom) * (1 - r / max_rows) + 4)
        for s, r in points
    ]
    path = "M" + " L".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    area = f"{path} L{xy[-1][0]:.1f},{height - bottom + 4} L{left},{height - bottom + 4} Z"
    marker = ""
    if 0 < plan < max_s:  # before it: loading the model and reading footers, no rows yet
        x = left + plan / max_s * (width - left - 10)
        marker = (
            f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{height - bottom + 4}" stroke="#8c959f" '
            f'stroke-dasharray="4 3"/><text x="{x + 4:.1f}" y="14">scoring starts</text>'
        )
    scoring = float((facts.get("stage_seconds") or {}).get("score") or 0) or max_s - plan
    rate = max_rows / scoring if scoring > 0 else max_rows / max_s
    inner = marker + (
        f'<path d="{area}" fill="#4c78a8" fill-opacity="0.15" stroke="none"/>'
        f'<path d="{path}" fill="none" stroke="#4c78a8" stroke-width="2"/>'
        + _axes(width, height, left, bottom)
        + f'<text x="{left - 6}" y="12" text-anchor="end">{_e(_n(max_rows))}</text>'
        + f'<text x="{left - 6}" y="{height - bottom + 4}" text-anchor="end">0</text>'
        + f'<text x="{left}" y="{height - 6}">0 s</text>'
        + f'<text x="{width - 10}" y="{height - 6}" text-anchor="end">{max_s:.2f} s</text>'
    )
    svg = _svg(width, height + 4, inner, "rows done over the run", fluid=True)
    summary = (
        f'<p class="muted">{_n(max_rows)} rows (scored or rejected) by {max_s:.2f} s after the '
        f"start; {_n(round(rate))} rows/s on average while scoring.</p>"
    )
    return _section("Throughput", svg + summary)


def _partitions_section(statistics: dict[str, Any], facts: dict[str, Any]) -> str:
    parts = []
    partitions = statistics.get("partitions") or {}
    scored = (partitions.get("scored") or {}).get("top") or {}
    rejected = (partitions.get("rejected") or {}).get("top") or {}
    if scored or rejected:
        keys = list(dict.fromkeys([*scored, *rejected]))
        head = '<tr><th>partition</th><th class="num">rows scored</th><th class="num">rows rejected</th></tr>'
        rows = [
            f"<tr><td><code>{_e(k)}</code></td><td class=num>{_n(scored.get(k, 0))}</td>"
            f"<td class=num>{_n(rejected.get(k, 0))}</td></tr>"
            for k in keys
        ]
        others = [(partitions.get(s) or {}).get("other", 0) for s in ("scored", "rejected")]
        if any(others):
            rows.append(
                f"<tr><td>other partitions</td><td class=num>{_n(others[0])}</td><td class=num>{_n(others[1])}</td></tr>"
            )
        by = ", ".join(statistics.get("partition_by") or [])
        parts.append(f"<h3>By partition ({_e(by)})</h3>" + _folded(head, rows, "partitions"))
    reasons = (
        (statistics.get("rejects_by_reason") or {}).get("top")
        or facts.get("rejected_by_reason")
        or {}
    )
    if reasons:
        total = sum(reasons.values()) or 1
        rows = [
            f"<tr><td><code>{_e(code)}</code></td><td class=num>{_n(n)}</td>"
            f"<td>{_bar(n / total)}</td></tr>"
            for code, n in reasons.items()
        ]
        head = '<tr><th>reason</th><th class="num">rows</th><th>share of rejects</th></tr>'
        parts.append(f"<h3>Rejected rows by reason</h3><table>{head}{''.join(rows)}</table>")
    else:
        parts.append('<p class="muted">no row rejected.</p>')
    scored_rows, rejected_rows = facts.get("rows_scored"), facts.get("rows_rejected")
    summary = f'<p class="muted">{_n(scored_rows)} rows scored, {_n(rejected_rows)} rejected.</p>'
    return _section("Rows by partition and rejects", summary + "".join(parts))


def _features_section(
    statistics: dict[str, Any], baseline: dict[str, Any] | None, psi: dict | None, facts: dict
) -> str:
    features = statistics.get("features") or {}
    if not features:
        return _section("Features", _no_statistics(statistics))
    if psi is None:
        compared = '<p class="muted">No previous run to compare: drift is not computed.</p>'
    else:
        since = facts.get("baseline_run_id")
        compared = (
            '<p class="muted">Drift: population stability index against the previous committed '
            f"run{' ' + _e(since) if since else ''}; above {DRIFT_THRESHOLD} is flagged.</p>"
        )
    head = (
        '<tr><th>feature</th><th>kind</th><th class="num">rows</th><th class="num">null share</th>'
        '<th class="num">min</th><th class="num">mean</th><th class="num">max</th>'
        '<th>distribution</th><th class="num">PSI</th></tr>'
    )
    rows = []
    for name, sketch in features.items():
        base = ((baseline or {}).get("features") or {}).get(name)
        rows_total = sketch.get("rows") or 0
        missing = (sketch.get("nulls") or 0) + (sketch.get("nans") or 0)
        share = f"{missing / rows_total:.1%}" if rows_total else "–"
        low, mean, high = _summary(sketch)
        rows.append(
            f"<tr><td><code>{_e(name)}</code></td><td>{_e(sketch.get('kind') or '–')}</td>"
            f"<td class=num>{_n(rows_total)}</td><td class=num>{share}</td>"
            f"<td class=num>{_e(low)}</td><td class=num>{_e(mean)}</td><td class=num>{_e(high)}</td>"
            f"<td>{_distribution(sketch, base, 160, 34, small=True)}</td>"
            f"<td class=num>{_psi_note(name, psi)}</td></tr>"
        )
    return _section("Features", compared + f"<table>{head}{''.join(rows)}</table>")


# ---------------------------------------------------------------- plots


def _distribution(
    sketch: dict[str, Any],
    base: dict[str, Any] | None,
    width: int,
    height: int,
    small: bool = False,
) -> str:
    """A histogram of a numeric sketch or the top values of a categorical one, SVG."""
    kind = sketch.get("kind")
    if kind == "numeric" and sketch.get("bins") and sketch.get("min") is not None:
        if base and (base.get("kind") != "numeric" or base.get("scale") != sketch.get("scale")):
            base = None
        return _histogram(sketch, base, width, height, small)
    if kind == "categorical" and (sketch.get("top") or sketch.get("other")):
        return _top_values(
            sketch, base if base and base.get("kind") == kind else None, width, small
        )
    return '<span class="muted">–</span>'


def _histogram(
    sketch: dict[str, Any], base: dict[str, Any] | None, width: int, height: int, small: bool
) -> str:
    scale = sketch.get("scale", "log")
    sketches = [sketch] + ([base] if base and base.get("bins") else [])
    if scale == "unit":
        low, high = 0.0, 1.0
    else:
        low = min(s["min"] for s in sketches if s.get("min") is not None)
        high = max(s["max"] for s in sketches if s.get("max") is not None)
        high = high if high > low else low + 1
    axis = _Axis("linear")
    shares = [_display_counts(s, low, high, axis) for s in sketches]
    if scale != "unit" and _squeezed(shares[0]):  # a long tail: most bars would be empty
        small_values = _small_magnitude(sketch)
        if low > 0 and high / low > 100:
            axis = _Axis("log")
        elif small_values > 0 and max(-low, high) > 100 * small_values:
            axis = _Axis("symlog", small_values)
        shares = [_display_counts(s, low, high, axis) for s in sketches]
    edges = axis.inverse(np.linspace(axis.forward(low), axis.forward(high), DISPLAY_BINS + 1))
    shares = [c / c.sum() if c.sum() else c for c in shares]
    top = max(float(c.max()) for c in shares) or 1.0
    left, bottom = (0, 0) if small else (8, 18)
    plot_w, plot_h = width - left - 4, height - bottom - 4
    step = plot_w / DISPLAY_BINS
    bars = []
    for i, share in enumerate(shares[0]):
        if share <= 0:
            continue
        h = max(share / top * plot_h, 0.8)
        bars.append(
            f'<rect x="{left + i * step:.1f}" y="{4 + plot_h - h:.1f}" width="{max(step - 0.6, 0.6):.1f}" '
            f'height="{h:.1f}" fill="#4c78a8"><title>{_e(_range(edges[i], edges[i + 1]))}: '
            f"{share:.1%}</title></rect>"
        )
    if len(shares) > 1:
        ys = [4 + plot_h - s / top * plot_h for s in shares[1]]
        steps = "".join(
            f"L{left + i * step:.1f},{y:.1f} L{left + (i + 1) * step:.1f},{y:.1f} "
            for i, y in enumerate(ys)
        )
        bars.append(
            f'<path d="M{left},{4 + plot_h} {steps}L{left + plot_w:.1f},{4 + plot_h}" fill="none" '
            'stroke="#f58518" stroke-width="1.5"/>'
        )
    if not small:
        bars.append(_axes(width, height, left, bottom))
        bars.append(f'<text x="{left}" y="{height - 4}">{_e(_short(edges[0]))}</text>')
        if axis.kind != "linear":
            bars.append(
                f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">'
                f"{axis.kind} scale</text>"
            )
        bars.append(
            f'<text x="{width - 4}" y="{height - 4}" text-anchor="end">{_e(_short(edges[-1]))}</text>'
        )
    return _svg(width, height, "".join(bars), "histogram")


class _Axis:
    """The x axis of a histogram: linear, log, or symmetric log (linear within +-c, log beyond)."""

    def __init__(self, kind: str, c: float = 1.0) -> None:
        self.kind, self.c = kind, c

    def forward(self, x: Any) -> Any:
        if self.kind == "log":
            return np.log10(x)
        if self.kind == "symlog":
            return np.sign(x) * np.log10(1 + np.abs(x) / self.c)
        return x

    def inverse(self, t: np.ndarray) -> np.ndarray:
        if self.kind == "log":
            return 10.0**t
        if self.kind == "symlog":
            return np.sign(t) * self.c * (10.0 ** np.abs(t) - 1)
        return t


def _squeezed(shares: np.ndarray) -> bool:
    """Whether a tenth of the bars hold most of the rows."""
    biggest = np.sort(shares)[::-1][: DISPLAY_BINS // 10]
    return bool(biggest.sum() > 0.6 * shares.sum())


def _small_magnitude(sketch: dict[str, Any]) -> float:
    """The 10% quantile of |value| (to the fixed bin): where a symmetric log axis turns linear."""
    bounds = np.abs([bin_edges(o, "log") for o in sketch["bins"]]).max(axis=1)
    counts = np.array(sketch["counts"], dtype=np.float64)
    finite = np.isfinite(bounds)
    bounds, counts = bounds[finite], counts[finite]
    if not len(bounds):
        return 0.0
    order = np.argsort(bounds)
    tenth = np.searchsorted(np.cumsum(counts[order]), counts.sum() / 10)
    return float(bounds[order][min(tenth, len(bounds) - 1)])


def _display_counts(sketch: dict[str, Any], low: float, high: float, axis: _Axis) -> np.ndarray:
    """Spread each fixed bin's count over the display bins it overlaps (values are assumed even
    within a bin, on the axis' scale), clipped to the plotted range."""
    scale = sketch.get("scale", "log")
    bounds = np.array([bin_edges(o, scale) for o in sketch["bins"]], dtype=np.float64)
    counts = np.array(sketch["counts"], dtype=np.float64)
    keep = np.isfinite(bounds).all(axis=1)  # infinities are not drawn
    bounds = axis.forward(np.clip(bounds[keep], low, high))
    counts = counts[keep]
    edges = np.linspace(axis.forward(low), axis.forward(high), DISPLAY_BINS + 1)
    result = np.zeros(DISPLAY_BINS)
    for (lo, hi), n in zip(bounds, counts, strict=True):
        if hi <= lo:  # a bin clipped to a point: all of it in one bar
            result[min(max(np.searchsorted(edges, lo, side="right") - 1, 0), DISPLAY_BINS - 1)] += n
            continue
        overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)
        result += n * overlap / (hi - lo)
    return result


def _top_values(
    sketch: dict[str, Any], base: dict[str, Any] | None, width: int, small: bool
) -> str:
    top = dict(list((sketch.get("top") or {}).items())[: 4 if small else TOP_VALUES])
    rest = sum((sketch.get("top") or {}).values()) - sum(top.values()) + (sketch.get("other") or 0)
    if rest:
        top["(other)"] = rest
    if sketch.get("nulls"):
        top["(null)"] = sketch["nulls"]
    total = sketch.get("rows") or sum(top.values()) or 1
    base_total = (base or {}).get("rows") or 0
    row_h = 12 if small else 18
    label_w = 0 if small else 110
    bar_w = width - label_w - 50
    parts = []
    for i, (value, n) in enumerate(top.items()):
        y = i * row_h
        w = max(n / total * bar_w, 0.8)
        parts.append(
            f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" fill="#4c78a8">'
            f"<title>{_e(value)}: {_n(n)} ({n / total:.1%})</title></rect>"
        )
        if base_total and value in (base or {}).get("top", {}):
            bx = label_w + base["top"][value] / base_total * bar_w
            parts.append(
                f'<line x1="{bx:.1f}" x2="{bx:.1f}" y1="{y + 1}" y2="{y + row_h - 1}" '
                'stroke="#f58518" stroke-width="2"/>'
            )
        if small:
            parts.append(f'<text x="{w + 3:.1f}" y="{y + row_h - 3}">{_e(_clip(value, 14))}</text>')
        else:
            parts.append(
                f'<text x="{label_w - 4}" y="{y + row_h - 5}" text-anchor="end">{_e(_clip(value, 16))}</text>'
                f'<text x="{label_w + w + 4:.1f}" y="{y + row_h - 5}">{n / total:.1%}</text>'
            )
    return _svg(width, len(top) * row_h + 2, "".join(parts), "counts of values")


def _axes(width: int, height: int, left: int, bottom: int) -> str:
    y = height - bottom + 4
    return (
        f'<line x1="{left}" y1="{y}" x2="{width - 4}" y2="{y}" stroke="#8c959f"/>'
        f'<line x1="{left}" y1="4" x2="{left}" y2="{y}" stroke="#8c959f"/>'
    )


def _svg(width: int, height: int, inner: str, label: str, fluid: bool = False) -> str:
    size = 'width="100%"' if fluid else f'width="{width}" height="{height}"'
    return (
        f'<svg {size} viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_e(label)}">{inner}</svg>'
    )


def _bar(share: float) -> str:
    return _svg(
        200,
        12,
        f'<rect x="0" y="1" width="{max(share * 200, 1):.1f}" height="10" fill="#e45756"/>',
        "share",
    )


# ---------------------------------------------------------------- small helpers


def _psi_note(name: str, psi: dict | None) -> str:
    if psi is None or name not in psi:
        return '<span class="muted">–</span>'
    value = float(psi[name])
    if value > DRIFT_THRESHOLD:
        return f'<span class="drift" title="distribution moved since the previous run">PSI {value:.3f}</span>'
    return f'<span class="muted">PSI {value:.3f}</span>'


def _summary(sketch: dict[str, Any]) -> tuple[str, str, str]:
    if sketch.get("kind") != "numeric" or sketch.get("min") is None:
        top = sketch.get("top") or {}
        if top:
            return "", f"{len(top)}{'+' if sketch.get('other') else ''} values", ""
        return "–", "–", "–"
    counted = sum(sketch.get("counts") or []) - (sketch.get("infinite") or 0)
    finite_sum = sketch.get("sum")
    mean = finite_sum / counted if counted and finite_sum is not None else None
    return _short(sketch["min"]), _short(mean), _short(sketch["max"])


def _no_statistics(statistics: dict[str, Any]) -> str:
    if statistics:
        return '<p class="muted">nothing to show.</p>'
    return '<p class="muted">No statistics: the run stopped before any row was scored.</p>'


def _engine(engine: dict[str, Any], facts: dict[str, Any]) -> str:
    name = engine.get("engine") or facts.get("engine") or "–"
    details = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in engine.items() if k != "engine")
    return f"{name} ({details})" if details else str(name)


def _section(title: str, content: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{content}</section>"


def _kv(rows: list[tuple[str, str]]) -> str:
    """Rows of (label, already escaped HTML)."""
    return (
        '<table class="kv">'
        + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _folded(head: str, rows: list[str], what: str) -> str:
    if len(rows) <= LIST_OPEN:
        return f"<table>{head}{''.join(rows)}</table>"
    shown, rest = rows[:LIST_OPEN], rows[LIST_OPEN:]
    return (
        f"<table>{head}{''.join(shown)}</table><details><summary>{len(rest)} more {_e(what)}"
        f"</summary><table>{''.join(rest)}</table></details>"
    )


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _code(value: Any) -> str:
    return f"<code>{_e(value)}</code>" if value else "–"


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value[:20])) + (" …" if len(value) > 20 else "")
    return str(value)


def _n(value: Any) -> str:
    return "–" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:,.0f}"


def _short(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:.3e}"


def _range(low: float, high: float) -> str:
    return f"{_short(low)} – {_short(high)}"


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def _bytes(value: Any) -> str:
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "–"


def _seconds(value: Any) -> str:
    return "–" if value is None else f"{float(value):.2f} s"


def _when(epoch: Any) -> str:
    if epoch is None:
        return "–"
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).isoformat(timespec="seconds")
