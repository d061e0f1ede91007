"""Progress for long work on stderr: a tqdm bar on a terminal; plain lines when stderr is a log
or a pipe (a line per stage, and one about every 10 % within a stage), so a run under nohup,
cron or a batch system still shows where it is."""

from __future__ import annotations

import os
import sys
import time
from typing import Self

from tqdm import tqdm

LINE_STEP = 10  # percent between two plain lines within one stage


class StageBar:
    """A 0-100 % indicator driven by (stage, fraction) callbacks, showing the current stage."""

    def __init__(self, title: str, line_step: int = LINE_STEP):
        self.title, self.line_step = title, line_step
        self.quiet = bool(os.environ.get("MCVAE_NO_PROGRESS"))
        self.lines = not sys.stderr.isatty() and not self.quiet
        self.bar = tqdm(total=100, desc=title, unit="%", disable=self.lines or self.quiet or not sys.stderr.isatty(),
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
        self.done = 0
        self.stage: str | None = None
        self.last_line = -line_step
        self.started = time.monotonic()

    def __call__(self, stage: str, fraction: float) -> None:
        target = round(100 * min(max(fraction, 0.0), 1.0))
        if self.lines and (stage != self.stage or target >= self.last_line + self.line_step):
            elapsed = time.monotonic() - self.started
            print(f"{self.title}: {target:3d}% {stage} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
            self.stage, self.last_line = stage, target
        if target > self.done:
            self.bar.update(target - self.done)
            self.done = target
        self.bar.set_postfix_str(stage, refresh=True)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
