"""Progress that reaches a log: rich's live bars on a terminal, plain lines off one.

Off a terminal (a pipe, a cluster job's log file) rich draws nothing until the end, so a log would
show no sign of life while a run trains. `LineProgress` takes the same calls as rich's Progress
(add_task / update / advance, used as a context manager) and prints one line to stderr each time
another 10% is done or EVERY_SECONDS have passed, and when a task completes.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.progress import TaskID

EVERY_SECONDS = 30.0
TENTHS = 10  # a line each time another tenth of the total is done


class LineProgress:
    """rich.progress.Progress's task calls, reported as plain lines: `label 12/120 (10%) loss 0.41 0:00:31`."""

    def __init__(self, every: float = EVERY_SECONDS) -> None:
        self.every = every
        self.tasks: list[dict[str, Any]] = []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> TaskID:
        now = time.monotonic()
        task = {"label": description, "total": total, "done": 0, "fields": fields, "t0": now, "shown": now}
        self.tasks.append({**task, "tenths": 0})  # tenths of the total already reported
        return TaskID(len(self.tasks) - 1)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: TaskID,
        completed: float | None = None,
        total: float | None = None,
        advance: float | None = None,
        **fields: Any,
    ) -> None:
        task = self.tasks[task_id]
        task["total"] = total if total is not None else task["total"]
        task["done"] = completed if completed is not None else task["done"] + (advance or 0)
        task["fields"].update(fields)
        if self._due(task):
            self._print(task)

    def _due(self, task: dict) -> bool:
        """Another 10% done, the task finished, or `every` seconds since the last line."""
        total = task["total"]
        tenths = int(task["done"] * TENTHS // total) if total else 0  # integer steps: no float drift
        if total and (tenths > task["tenths"] or task["done"] >= total):
            task["tenths"] = tenths
            return True
        return time.monotonic() - task["shown"] >= self.every

    def _print(self, task: dict) -> None:
        task["shown"] = now = time.monotonic()
        total = task["total"]
        count = f"{task['done']:g}/{total:g} ({task['done'] / total:.0%})" if total else f"{task['done']:g}"
        fields = " ".join(f"{k} {v}" for k, v in task["fields"].items() if v not in ("", None))
        elapsed = time.strftime("%H:%M:%S", time.gmtime(now - task["t0"]))
        print(" ".join(p for p in (task["label"], count, fields, elapsed) if p), file=sys.stderr, flush=True)


def on_terminal() -> bool:
    """Whether a live bar can be seen: stdout (where rich draws) and stderr both terminals."""
    return sys.stdout.isatty() and sys.stderr.isatty()
