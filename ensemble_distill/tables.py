"""Result tables of both tasks: one Markdown formatter whose metric columns the task declares (`Task.columns`),
groups of models as mean ± standard error, single systems as value [95% CI], and the truncation table of a run's
students.

    rows = table_rows(systems, scores, temperatures, task.columns)       # evaluation.py writes results.json
    print(format_rows(rows, task.columns, title="runs/x, test"))
"""

from dataclasses import dataclass

import numpy as np

from .calibration.report import DEBIASED, DEBIASED_NOTE
from .calibration.temperature import at_bound, temperature_label

SCALED = ("-ts", " + TS")  # a temperature-scaled system: its name's and its label's suffix


@dataclass(frozen=True)
class Column:
    """A metric column: the key in calibration.report's metrics, its header, and the factor to the paper's units
    (100 for fractions, 1 for BLEU, which is already 0-100)."""
    key: str
    header: str
    scale: float = 100


def mean_and_se(scores: list[dict], metrics) -> dict:
    """{metric: {value, se}} over several models' metric dicts (each {metric: {value, ...}}). One model has no
    spread to take a standard error of: its own stats (value and 95% interval) are returned as they are."""
    if len(scores) == 1:
        return {m: scores[0][m] for m in metrics}
    out = {}
    for m in metrics:
        values = np.array([s[m]["value"] for s in scores])
        out[m] = {"value": float(values.mean()), "se": float(values.std(ddof=1) / np.sqrt(len(values)))}
    return out


def cell(stat: dict, scale: float = 100) -> str:
    if "se" in stat:
        return f"{scale * stat['value']:.2f} ± {scale * stat['se']:.2f}"
    return f"{scale * stat['value']:.2f} [{scale * stat['ci_low']:.2f}, {scale * stat['ci_high']:.2f}]"


def table_rows(systems, scores: dict[str, dict], temperatures: dict[str, float], columns) -> list[dict]:
    """The rows of results.json, one schema for both tasks: each group of systems (evaluation.System.group:
    "members", "individuals") as one mean ± s.e. row, then every other system with its 95% interval; each row
    followed by its temperature-scaled twin (" + TS"). A row: {"system": label, "name": the folder under
    RUN/eval/<split>/ (a group's: its name), "temperature": T (1 for raw rows; a group's mean T, with
    "temperature_note" when some fits stopped at a bound), metric: {value, ci_low, ci_high} or {value, se}}.
    `scores` holds each system's metrics under its name and name + "-ts"."""
    keys = [c.key for c in columns]
    groups = list(dict.fromkeys(s.group for s in systems if s.group))
    rows = []
    for group in groups:
        names = [s.name for s in systems if s.group == group]
        for suffix, label in (("", ""), SCALED):
            ts = [temperatures[n] for n in names]
            counted = f"{group} ({len(names)}, mean ± s.e.)" if len(names) > 1 else group.removesuffix("s")
            row = {"system": counted + label, "name": group + suffix,
                   "temperature": float(np.mean(ts)) if suffix else 1.0}
            if suffix and any(map(at_bound, ts)):  # a mean over bounds is no temperature: say so in the table
                row["temperature_note"] = f"{sum(map(at_bound, ts))} of {len(ts)} at the fit's bound"
            rows.append({**row, **mean_and_se([scores[n + suffix] for n in names], keys)})
    for s in systems:
        if s.group:
            continue
        for suffix, label in (("", ""), SCALED):
            rows.append({"system": s.label + label, "name": s.name + suffix,
                         "temperature": temperatures[s.name] if suffix else 1.0,
                         **{k: scores[s.name + suffix][k] for k in keys}})
    return rows


def units(columns) -> str:
    return "values ×100" if all(c.scale == 100 for c in columns) else "calibration ×100"


def format_rows(rows: list[dict], columns, title: str = "", temperature: bool = True) -> str:
    """A Markdown table in the paper's units: mean ± s.e. for groups, value [95% CI] for single systems; T is the
    fitted temperature of a " + TS" row (1.00 for a raw one); `temperature=False` leaves the T column out. ECE-type
    columns are marked * and explained below the table (DEBIASED_NOTE: bias-corrected values)."""
    lines = [f"**{title}** ({units(columns)})", ""] if title else []
    headers = [_header(c) for c in columns]
    lines += ["| system | " + ("T | " if temperature else "") + " | ".join(headers) + " |",
              "|---|" + ("---|" if temperature else "") + "---|" * len(columns)]
    for row in rows:
        cells = [cell(row[c.key], c.scale) for c in columns]
        if temperature:
            note = f" ({row['temperature_note']})" if "temperature_note" in row else ""
            cells.insert(0, f"{temperature_label(row['temperature'])}{note}")
        lines.append(f"| {row['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + _debiased_note(columns)) + "\n"


def truncation_rows(students: dict[str, dict], rows: list[dict], columns) -> list[dict]:
    """Per student (its folder name → its teacher.json: truncation, probs_dtype and bytes_per_token), its raw row's
    metrics beside its teacher store's truncation, layout (when not float16) and size. Rows: fixed V' ascending,
    then adaptive, then sampled stores by their draws R ("samples"; top_k and epsilon 0 there, samples 0 in the
    others)."""
    by_name = {row["name"]: row for row in rows}
    table = []
    for name, teacher in students.items():
        t = teacher["truncation"]
        k, eps, r = t.get("top_k", 0), t.get("epsilon") or 0.0, t.get("samples", 0)
        truncation = f"sampled R = {r}" if r else f"adaptive 1 - {eps:g} (at most {k})" if eps else f"V' = {k}"
        if not r and teacher.get("probs_dtype") not in (None, "float16"):
            truncation += f", {teacher['probs_dtype']}"
        table.append({"student": name, "truncation": truncation, "top_k": k, "epsilon": eps, "samples": r,
                      "bytes_per_token": teacher["bytes_per_token"], **{c.key: by_name[name][c.key] for c in columns}})
    table.sort(key=lambda row: (row["samples"] > 0, row["epsilon"] > 0, row["top_k"], row["epsilon"], row["samples"]))
    return table


def format_sweep(table: list[dict], columns, title: str) -> str:
    """The truncation table in Markdown: each student (students of one truncation may differ by teacher or
    settings), its truncation, metrics (values only) and bytes per token."""
    lines = [f"**{title}** ({units(columns)})", "",
             "| student | truncation | " + " | ".join(_header(c) for c in columns) + " | bytes/token |",
             "|---|---|" + "---|" * (len(columns) + 1)]
    for row in table:
        cells = [f"{c.scale * row[c.key]['value']:.2f}" for c in columns]
        lines.append(f"| {row['student']} | {row['truncation']} | " + " | ".join(cells)
                     + f" | {row['bytes_per_token']:.1f} |")
    return "\n".join(lines + _debiased_note(columns)) + "\n"


def _header(column: Column) -> str:
    """A column's header, marked * for an ECE-type metric (reported bias-corrected: DEBIASED_NOTE)."""
    return column.header + ("*" if column.key in DEBIASED else "")


def _debiased_note(columns) -> list[str]:
    """The lines that explain the * of ECE-type columns below a table (none without such a column)."""
    return ["", DEBIASED_NOTE] if any(c.key in DEBIASED for c in columns) else []


def duration(seconds: float) -> str:
    """A wall time for people: "42 s" under 90 s, then minutes, then hours from 90 minutes."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
