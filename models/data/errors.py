"""Errors for bad input data: one line that names the file (or cohort) and what is wrong.

Both subclass ``ValueError`` so a caller that only knows "the input was bad" (the gateway turning
it into a 4xx, the CLI printing it) need not import these names.
"""

from __future__ import annotations

from pathlib import Path


class ScanError(ValueError):
    """One scan could not be used. ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class CohortError(ValueError):
    """The cohort as a whole is unusable (nothing found, a manifest row points nowhere, ...)."""


class QualityError(ScanError):
    """A scan reads fine but would be junk to learn from (constant, nearly empty, a sliver of
    the target grid): refused before any training, named with the reason."""
