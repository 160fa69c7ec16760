"""Run logs: ``metrics.csv`` and ``metrics.jsonl`` always, TensorBoard when it is installed (main process only)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from largekernel._files import write_text

__all__ = ["RunLogger"]


def _csv_text(rows: list[dict[str, Any]]) -> str:
    # The columns of the last row: a resumed run may have switched a column on (e.g. EMA).
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[-1]), restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class RunLogger:
    """Append one row per epoch to CSV and JSONL (and TensorBoard scalars); a no-op when ``enabled`` is False."""

    def __init__(self, output_dir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.dir = Path(output_dir)
        self._tb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self._tb = None

    def log_epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        csv_path = self.dir / "metrics.csv"
        header = None
        if csv_path.exists():
            with open(csv_path, newline="") as f:
                header = next(csv.reader(f), None)
        if header == list(row):
            with open(csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=list(row)).writerow(row)
        else:
            write_text(csv_path, _csv_text(self._rows()))
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch" and value is not None:
                    self._tb.add_scalar(key, value, row["epoch"])
            self._tb.flush()

    def _rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.dir / "metrics.jsonl").read_text().splitlines() if line.strip()]

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the CSV and JSONL logs by ``rows`` (a resumed run: the history of its checkpoint, which also
        drops a line half-written by a crash)."""
        if not self.enabled:
            return
        if not rows:
            for name in ("metrics.jsonl", "metrics.csv"):
                (self.dir / name).unlink(missing_ok=True)
            return
        write_text(self.dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        write_text(self.dir / "metrics.csv", _csv_text(rows))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
