"""python -m linux_clone.bench: how fast linux_clone makes the namespace calls, as a ratio to
raw C loops of the same syscalls (linux_clone._bench) run in the same process in the same run,
next to the other ways Python has to make them.

harness: the timing loops, the worker processes, the machine; rows: what each row times;
report: the JSON summary, the table and the chart."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

from .harness import FULL, QUICK, Settings, Skip, in_worker, machine, privilege_problem, versions
from .report import COLUMNS, markdown, plot, summarize, table
from .rows import ROWS, Row, Target

__all__ = ["COLUMNS", "FULL", "QUICK", "ROWS", "Row", "Settings", "Target", "main", "markdown",
           "run"]


def run(settings: Settings, quick: bool) -> Tuple[Dict[str, Any], bool]:
    """Measure every row; the report and whether every row that could run did."""
    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    progress("linux_clone.bench: measuring the machine")
    began = time.monotonic()
    report: Dict[str, Any] = {
        "benchmark": "linux_clone.bench", "versions": versions(), "machine": machine(),
        "settings": {"quick": quick, "repetitions": settings.repetitions,
                     "proc_repetitions": settings.proc_repetitions, "loop_ns": settings.loop_ns},
        "rows": [],
    }
    problem = privilege_problem()
    ok = True
    for number, row in enumerate(ROWS, 1):
        label = f"[{number}/{len(ROWS)}] {row.title}"
        entry: Dict[str, Any] = {"id": row.key, "operation": row.title, "unit": row.unit}
        if row.privileged and problem is not None:
            entry["skipped_row"] = problem
            progress(f"{label}: skipped, {problem}")
        else:
            start = time.monotonic()
            progress(f"{label} ...")
            try:
                measured = in_worker(partial(row.measure, settings))
            except Skip as exc:
                entry["skipped_row"] = str(exc)
                progress(f"{label}: skipped, {exc}")
            except Exception as exc:
                entry["error"] = repr(exc)
                ok = False
                progress(f"{label}: failed, {exc!r}")
            else:
                entry = summarize(row, measured)
                progress(f"{label}: {time.monotonic() - start:.1f} s")
        report["rows"].append(entry)
    report["seconds"] = round(time.monotonic() - began, 1)
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    progress(f"linux_clone.bench: {report['seconds']:.0f} s, load average "
             f"{report['machine']['loadavg'][0]} at start, {report['loadavg_end'][0]} at the end")
    return report, ok


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m linux_clone.bench",
        description="Time linux_clone's namespace calls against raw C loops of the same "
                    "syscalls and against os, ctypes, fcntl, subprocess, lxns and pyroute2 "
                    "where available, and print a table to paste into an issue.  Progress "
                    "goes to stderr.  Needs root for the rows that create namespaces.")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (a few seconds), as CI does")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="print the results as JSON instead of the table")
    output.add_argument("--markdown", action="store_true",
                        help="print only the README's block: the machine, python and method "
                             "lines and the table")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also draw a chart of the ratios (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'linux_clone[plot]'")
    report, ok = run(QUICK if args.quick else FULL, args.quick)
    if args.json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
    elif args.markdown:
        print(markdown(report))
    else:
        print(table(report))
    if args.plot is not None:
        plot(report, args.plot)
        print(f"linux_clone.bench: chart written to {args.plot}", file=sys.stderr)
    return 0 if ok else 1
