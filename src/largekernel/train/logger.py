"""Run logs: ``metrics.csv`` and ``metrics.jsonl`` always, TensorBoard when it is installed (main process only)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["RunLogger"]


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
        fields = list(row)
        new = not csv_path.exists()
        if not new:
            with open(csv_path, newline="") as f:
                header = next(csv.reader(f), None)
            # A resumed run whose columns changed (e.g. EMA switched on) starts a fresh header.
            new = header != fields
        with open(csv_path, "w" if new else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch" and value is not None:
                    self._tb.add_scalar(key, value, row["epoch"])
            self._tb.flush()

    def truncate_after(self, epoch: int) -> None:
        """Drop rows of epochs ``> epoch`` (logged after the checkpoint a resumed run starts from)."""
        if not self.enabled:
            return
        jsonl = self.dir / "metrics.jsonl"
        if not jsonl.exists():
            return
        rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("epoch", 0) <= epoch]
        jsonl.unlink()
        (self.dir / "metrics.csv").unlink(missing_ok=True)
        tb, self._tb = self._tb, None
        for r in rows:
            self.log_epoch(r)
        self._tb = tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
