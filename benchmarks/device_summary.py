"""The report of ``benchmarks/device_check.sh``: one JSON and one markdown table from what its steps left in OUTDIR.

Reads ``env.json``, ``steps.tsv``, ``tests.xml`` (or the pytest log's last line) and every suite's JSON under
``bench/SUITE-DTYPE/``; writes ``device_check.json`` and ``device_check.md`` (atomically). Standard library only, so
that it runs whatever else failed.

Usage: python benchmarks/device_summary.py OUTDIR
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

__all__ = ["summarise", "main"]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _steps(out: Path) -> list[dict]:
    try:
        lines = (out / "steps.tsv").read_text().splitlines()
    except OSError:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]


def _tests(out: Path) -> dict:
    """Counts from pytest's JUnit XML; else the closing line of its log (a run stopped by its timeout has no XML)."""
    try:
        suite = ElementTree.parse(out / "tests.xml").getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                  if case.find("failure") is not None or case.find("error") is not None]
        return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
                "seconds": float(suite.get("time", 0)), "failed": failed, "source": "tests.xml"}
    except (OSError, ElementTree.ParseError, AttributeError):
        pass
    try:
        lines = [line for line in (out / "logs" / "tests.log").read_text().splitlines() if line.strip()]
    except OSError:
        lines = []
    closing = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed|error)", line)),
                   lines[-1] if lines else "no test output")
    return {"source": "logs/tests.log", "summary": closing}


def _suites(out: Path, steps: list[dict]) -> dict[str, dict]:
    """``{"SUITE-DTYPE": payload}`` for every suite JSON the bench steps wrote, in the order they ran."""
    order = [s["step"].removeprefix("bench-") for s in steps if s["step"].startswith("bench-")]
    paths = sorted((out / "bench").glob("*/*.json"),
                   key=lambda p: (order.index(p.parent.name) if p.parent.name in order else len(order), str(p)))
    suites = {}
    for path in paths:
        payload = _read_json(path)
        if payload is not None:
            suites[path.parent.name] = payload
    return suites


def summarise(out: Path) -> dict:
    """Everything the check produced, as one JSON-able dict."""
    steps = _steps(out)
    suites = _suites(out, steps)
    targets = [{"run": run, **t} for run, payload in suites.items() for t in payload.get("targets", [])]
    return {"env": _read_json(out / "env.json"), "steps": steps, "tests": _tests(out), "targets": targets,
            "suites": suites}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value).replace("|", "/")


def _table(rows: list[dict], columns: list[str] | None = None) -> list[str]:
    if not rows:
        return ["(no rows)"]
    if columns is None:
        columns = []
        for row in rows:
            columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]


def markdown(summary: dict) -> str:
    env = summary["env"] or {}
    device = env.get("gpu") or ("CPU (--cpu-dry-run)" if env.get("dry_run") else "unknown")
    lines = ["# Device check (issue 19)", "",
             f"Device: {device}; torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
             f"Python {env.get('python')}.", "", "## Steps", ""]
    lines += _table(summary["steps"], ["step", "status", "rc", "seconds", "log"])
    tests = summary["tests"]
    lines += ["", "## Tests", ""]
    if "tests" in tests:
        lines.append(f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
                     f"{tests['skipped']} skipped of {tests['tests']} in {tests['seconds']:.0f} s.")
        lines += [f"- failed: `{name}`" for name in tests["failed"]]
    else:
        lines.append(f"{tests.get('summary')} (from {tests.get('source')})")
    targets = summary["targets"]
    met = sum(t["met"] is True for t in targets)
    missed = sum(t["met"] is False for t in targets)
    lines += ["", "## Targets", "", f"{met} met, {missed} not met, {len(targets) - met - missed} not measured.", ""]
    lines += _table([{**t, "met": {True: "met", False: "NOT met", None: "n/a"}[t["met"]]} for t in targets],
                    ["run", "target", "value", "goal", "met"])
    lines += ["", "## Bench rows", ""]
    for run, payload in summary["suites"].items():
        machine = payload.get("machine", {})
        lines += [f"### {run}", "", f"device {machine.get('device')} ({machine.get('gpu', machine.get('cpu'))}), "
                  f"dtype {machine.get('dtype')}, torch {machine.get('torch')}, CUDA {machine.get('cuda')}"
                  + ("" if payload.get("complete", True) else "; INCOMPLETE (stopped before its last length)"), ""]
        lines += _table(payload.get("rows", [])) + [""]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python benchmarks/device_summary.py OUTDIR (the folder device_check.sh wrote)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    summary = summarise(out)
    _write(out / "device_check.json", json.dumps(summary, indent=2))
    _write(out / "device_check.md", markdown(summary))
    print(f"wrote {out / 'device_check.json'} and {out / 'device_check.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
