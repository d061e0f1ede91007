"""Progress bars for long work (tqdm on stderr; silent when stderr is not a terminal, so logs and
error output stay clean)."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


class StageBar:
    """A 0-100 % bar driven by (stage, fraction) callbacks, showing the current stage."""

    def __init__(self, title: str):
        disable = not sys.stderr.isatty() or bool(os.environ.get("MCVAE_NO_PROGRESS"))
        self.bar = tqdm(total=100, desc=title, unit="%", disable=disable,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
        self.done = 0

    def __call__(self, stage: str, fraction: float) -> None:
        target = int(round(100 * min(max(fraction, 0.0), 1.0)))
        if target > self.done:
            self.bar.update(target - self.done)
            self.done = target
        self.bar.set_postfix_str(stage, refresh=True)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "StageBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
