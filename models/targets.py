"""How many synthetic scans each class gets: ``balance``, a ratio, or explicit counts."""

from __future__ import annotations

import difflib
import math

from .data.errors import CohortError

# A request beyond this many synthetic scans of one class is refused: it is almost surely a
# typo, and would fill the disk (about 130 KB per 32^3 scan) long before it finished.
MAX_SYNTHETIC_PER_CLASS = 10_000


def parse_target(spec: str | float | dict[str, int]) -> str | float | dict[str, int]:
    """'balance' | '0.5' / 'ratio:0.5' | 'AD=40,CN=0' (or the already-parsed forms)."""
    if isinstance(spec, dict):
        return {str(k): int(v) for k, v in spec.items()}
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return float(spec)
    text = str(spec).strip()
    if text.lower() == "balance":
        return "balance"
    if "=" in text:
        counts: dict[str, int] = {}
        for part in text.split(","):
            label, _, number = part.partition("=")
            try:
                counts[label.strip()] = int(number)
            except ValueError:
                raise CohortError(f"target: '{part.strip()}' is not CLASS=COUNT") from None
        return counts
    try:
        return float(text.removeprefix("ratio:"))
    except ValueError:
        raise CohortError(
            f"target: '{text}' is not 'balance', a ratio such as 0.5, or counts such as AD=40"
        ) from None


def synthetic_counts(
    counts: dict[str, int], spec: str | float | dict[str, int], limit: int = MAX_SYNTHETIC_PER_CLASS
) -> dict[str, int]:
    """Synthetic scans to make per class, given the real counts.

    ``balance``: every class up to the majority count. A ratio r: every class up to r times the
    majority count (1.0 is balance). Counts: exactly those, for the classes named.
    """
    target = parse_target(spec)
    if len(counts) < 2:
        only = next(iter(counts), "none")
        raise CohortError(f"the cohort has one class only ('{only}'): nothing to balance against")
    majority = max(counts.values())
    if target == "balance":
        target = 1.0
    if isinstance(target, float):
        if not 0 < target <= 100 or math.isnan(target):
            raise CohortError(f"target: ratio must be in (0, 100], got {target}")
        wanted = {c: max(0, math.ceil(target * majority) - n) for c, n in counts.items()}
    else:
        unknown = sorted(set(target) - set(counts))
        if unknown:
            raise CohortError(
                f"target: unknown class {', '.join(repr(u) for u in unknown)}"
                f"{did_you_mean(unknown[0], list(counts))} (classes: {', '.join(sorted(counts))})"
            )
        negative = [c for c, n in target.items() if n < 0]
        if negative:
            raise CohortError(f"target: negative count for class '{negative[0]}'")
        wanted = {c: target.get(c, 0) for c in counts}
    for label, n in wanted.items():
        if n > limit:
            raise CohortError(
                f"target: {n} synthetic scans of class '{label}' exceeds the limit of {limit} per class"
            )
    for label, n in wanted.items():
        if n > 0 and counts[label] < 2:
            raise CohortError(
                f"class '{label}' has {counts[label]} scan(s); at least 2 are needed to fit a model"
                + unknown_label_hint(label, counts)
            )
    return wanted


def did_you_mean(name: str, choices: list[str]) -> str:
    """"; did you mean 'AD'?" when ``name`` is a letter-case variant or a small edit of one of
    ``choices`` (a typo of a class name), else empty. The CLI and the gateway both word target
    checks with it (this module is torch-free)."""
    # cutoff 0.5: one letter off in a two-letter class name ('AF' for 'AD') is a ratio of 0.5
    near = [c for c in choices if c.lower() == name.lower() and c != name] or difflib.get_close_matches(
        name, choices, n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else ""


def unknown_label_hint(label: str, counts: dict[str, int]) -> str:
    """Words for a class too small to learn whose label looks like a typo of another class's: an
    unknown label here is a rare label within a small edit (or letter case) of a class with more
    scans (``ADD`` or ``ad`` beside ``AD``). Empty when none is."""
    others = [c for c in counts if c != label and counts[c] > counts[label]]
    near = [c for c in others if c.lower() == label.lower()] or difflib.get_close_matches(label, others, n=1,
                                                                                          cutoff=0.6)
    if not near:
        return ""
    return (f"; unknown label '{label}': is it a typo of class '{near[0]}'? "
            f"(classes: {', '.join(f'{c} {counts[c]}' for c in sorted(counts))})")
