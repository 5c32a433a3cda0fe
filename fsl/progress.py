"""Progress for long work: a bar on a terminal, plain periodic lines otherwise (logs, CI, MLflow)."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

import click


@contextlib.contextmanager
def progress(total: int, label: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`. A click bar on a TTY; else a line at every 10% (and at least every 30 s)."""
    if not enabled or total <= 0:
        yield lambda n: None
        return
    if sys.stdout.isatty():
        with click.progressbar(length=total, label=label, show_eta=True) as bar:
            yield bar.update
        return
    done, next_mark, last = 0, total / 10, time.monotonic()

    def advance(n: int) -> None:
        nonlocal done, next_mark, last
        done += n
        if done >= next_mark or done == total or time.monotonic() - last > 30:
            click.echo(f"{label}: {done}/{total} ({100 * done // total}%)")
            last = time.monotonic()
            while next_mark <= done:
                next_mark += total / 10

    yield advance


def stage_lines(echo: Callable[[str], None], every: float = 2.0) -> Callable[[str, int, int], None]:
    """`report(stage, done, total)` for work in stages of unknown length up front: a line at most
    every `every` seconds and at each stage's end, with the time the stage still needs at its
    rate so far (`images encoded: 1,024/12,000 (8%), 41 s left`)."""
    started: dict[str, float] = {}
    last = [0.0]

    def report(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        begun = started.setdefault(stage, now)
        if done < total and now - last[0] < every:
            return
        last[0] = now
        left = (now - begun) / done * (total - done) if done else float("nan")
        tail = "done" if done >= total else f"{left:.0f} s left" if left == left else "starting"
        echo(f"{stage}: {done:,}/{total:,} ({100 * done // max(total, 1)}%), {tail}")

    return report
