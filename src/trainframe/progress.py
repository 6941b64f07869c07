"""The one progress display of long commands: a rich bar when shown, nothing otherwise.

Callers make the same calls either way, so "on a terminal only" is one argument, not a branch at
every update. rich is imported only when a bar is shown.
"""

from __future__ import annotations


class Progress:
    """A rich progress display when ``show`` (typically: the output is a terminal), else nothing.

    Columns: the task's label, a bar, done/total, ``fields`` (a format of the task's fields, e.g.
    ``"{task.fields[rate]:,.0f} docs/s"``), elapsed and remaining time. ``transient``: the bar goes
    when done; otherwise it stays as the last line. A context manager, or ``start`` and ``close``.
    """

    def __init__(self, show: bool, fields: str | None = None, *, transient: bool = True):
        self.bar = None
        if show:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            extra = [TextColumn(fields)] if fields else []
            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra,
                                    TimeElapsedColumn(), TimeRemainingColumn(), transient=transient)

    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        if self.bar is not None:
            self.bar.start()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def task(self, label: str, total: int | None = None, **fields):
        """A new bar; ``total`` None: unknown. ``fields``: the initial values ``fields`` formats."""
        return self.bar.add_task(label, total=total, **fields) if self.bar is not None else None

    def update(self, task, **changes) -> None:
        """``advance=n``, ``completed=n`` and new field values, as rich's ``Progress.update``."""
        if self.bar is not None:
            self.bar.update(task, **changes)

    def print(self, message: str) -> None:
        """A line above the bar (printed plainly when there is none)."""
        if self.bar is not None:
            self.bar.console.print(message)
        else:
            print(message, flush=True)
