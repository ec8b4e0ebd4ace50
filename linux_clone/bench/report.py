"""The report: a row's summary for the JSON, the Markdown table for an issue or the README,
and the chart."""

from __future__ import annotations

import statistics
from typing import Any, Dict

from .harness import CIMPORT, LC, PROC_C, RAW, Measured
from .rows import Row

# The table's columns, in this order; a column shows when any row has it.
COLUMNS = [RAW, CIMPORT, LC, PROC_C, "2 threads", "2 threads C", "import", "spawn", "os",
           "ctypes", "fcntl", "subprocess", "lxns", "pyroute2"]


def summarize(row: Row, measured: Measured) -> Dict[str, Any]:
    raw = measured.samples[RAW]
    results = {}
    for name, values in measured.samples.items():
        results[name] = {
            "what": measured.what[name], "ns": statistics.median(values), "ns_min": min(values),
            "ratio": statistics.median(v / r for v, r in zip(values, raw)),
            "samples": [round(v, 1) for v in values],
        }
    targets = []
    for target in row.targets:
        value = target.measure(measured.samples)
        targets.append({"implementation": target.impl, "target": target.text,
                        "kind": target.kind, "limit": target.limit,
                        "compared_with": target.other_key if target.kind != "ns" else None,
                        "value": value, "met": None if value is None else target.met(value),
                        "not_here": target.not_here})
    return {"id": row.key, "operation": row.title, "unit": row.unit, "notes": row.notes,
            "calls_per_loop": measured.n, "repetitions": len(raw), "results": results,
            "skipped": measured.skipped, "targets": targets}


def _time(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e4:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:,.0f} ns"


def _target_value(target: Dict[str, Any]) -> str:
    value = target["value"]
    if target["kind"] in ("ns", "over"):
        return _time(value)
    return f"{value:.2f}×"


def _cell(row: Dict[str, Any], result: Dict[str, Any]) -> str:
    cell = f"{_time(result['ns'])} ({result['ratio']:.2f}×)"
    if row["id"] == "setup":  # the unit for set-up loops
        cell += f", {1e9 / result['ns']:,.0f}/s"
    return cell


def _met(target: Dict[str, Any]) -> str:
    if target["value"] is None:
        return "n/a"
    verdict = "n/a" if target["met"] is None else "yes" if target["met"] else "**no**"
    return f"{verdict} {_target_value(target)}"


def markdown(report: Dict[str, Any]) -> str:
    """The block of the README's benchmark section: the machine, python and method lines, a
    blank line, and the table (`python -m linux_clone.bench --markdown`)."""
    m = report["machine"]
    versions = report["versions"]
    settings = report["settings"]
    rows = [r for r in report["rows"] if "results" in r]
    columns = [c for c in COLUMNS if any(c in r["results"] for r in rows)]
    load = f"load average {m['loadavg'][0]} at start"
    if "loadavg_end" in report:
        load += f", {report['loadavg_end'][0]} at the end"
    lines = [
        f"- machine: Linux {m['kernel']} {m['arch']}, {m['cpu']} ({m['cpus']} CPUs), "
        f"clocksource {m['clocksource']}, {load}",
        f"- python: {m['python']}, {m['libc']}; comparators: "
        + ", ".join(f"{k} {v}" if v else f"{k} (not installed)"
                    for k, v in versions.items() if k != "linux_clone"),
        f"- method: cells are the median time per {'/'.join(sorted({r['unit'] for r in rows}))}"
        f" over {settings['repetitions']} interleaved repetitions"
        f" ({settings['proc_repetitions']} single calls for the rows that create"
        " processes or namespaces) and, in parentheses, the median of each repetition's"
        " ratio to the raw C loop (syscall(2) in a nogil Cython loop) of the same row, same"
        " process, same run",
        "",
        "| operation | " + " | ".join(columns) + " | target | met |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for r in rows:
        cells = ["—" if c not in r["results"] else _cell(r, r["results"][c]) for c in columns]
        target = "; ".join(t["target"] for t in r["targets"])
        met = "; ".join(_met(t) for t in r["targets"])
        lines.append(f"| {r['operation']} | " + " | ".join(cells) + f" | {target or '—'} | "
                     f"{met or '—'} |")
    return "\n".join(lines)


def table(report: Dict[str, Any]) -> str:
    """The whole report for an issue: a heading, the README's block, and the notes on what
    each column ran, what was skipped and why."""
    rows = [r for r in report["rows"] if "results" in r]
    columns = [c for c in COLUMNS if any(c in r["results"] for r in rows)]
    lines = [
        f"### linux_clone {report['versions']['linux_clone']} benchmark"
        f" (`python -m linux_clone.bench{' --quick' if report['settings']['quick'] else ''}`)",
        "", markdown(report), "",
        "Targets are for the linux_clone column unless they name another; × is relative to raw "
        "C unless the target names another column; n/a: the goal is not for this build.",
    ]
    if "seconds" in report:
        lines[-1] += f"  The run took {report['seconds']:.0f} s."
    notes = [f"- {r['operation']}: {r['notes']}" for r in rows if r["notes"]]
    for r in rows:
        if r["id"] in ("fork", "clone", "spawn", "setup", "configure_loopback", "startup"):
            notes.append(f"- {r['operation']}: " + "; ".join(
                f"{name} = {res['what']}" for name, res in r["results"].items()
                if name not in (RAW, CIMPORT)))
    if notes:
        lines += ["", "Notes:", *notes]
    skipped = [f"- {r['operation']}: {r['skipped_row']}" for r in report["rows"]
               if "skipped_row" in r]
    if skipped:
        lines += ["", "Skipped rows:", *skipped]
    missing = [f"- {r['operation']}, {name}: {why}" for r in rows
               for name, why in r["skipped"].items() if name in columns]
    if missing:
        lines += ["", "Not measured:", *missing]
    errors = [f"- {r['operation']}: {r['error']}" for r in report["rows"] if "error" in r]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines)


def plot(report: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "results" in r]
    columns = [c for c in COLUMNS if c != RAW and any(c in r["results"] for r in rows)]
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.1 * len(rows) * len(columns)))
    height = 0.8 / max(1, len(columns))
    for i, column in enumerate(columns):
        ys = [k + i * height for k, r in enumerate(rows) if column in r["results"]]
        xs = [r["results"][column]["ratio"] for r in rows if column in r["results"]]
        ax.barh(ys, xs, height=height, label=column)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks([k + 0.4 - height / 2 for k in range(len(rows))])
    ax.set_yticklabels([r["operation"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("time per call, × the raw C loop (log scale; lower is better)")
    m = report["machine"]
    ax.set_title(f"linux_clone.bench — Linux {m['kernel']}, {m['cpu']}, {m['python']}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
