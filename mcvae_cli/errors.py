"""Turning exceptions about bad input into one readable line."""

from __future__ import annotations


def one_line(err: BaseException) -> str:
    """A single line that says what was wrong (pydantic's multi-line reports folded)."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        try:
            parts = []
            for e in errors():
                where = ".".join(str(p) for p in e.get("loc", ())) or "config"
                parts.append(f"{where}: {e.get('msg', '')}")
            if parts:
                return "invalid configuration: " + "; ".join(parts)
        except Exception:  # noqa: BLE001, S110 - not a pydantic error after all: report str(err)
            pass
    from models.data.advice import for_cli  # torch-free

    text = for_cli(" ".join(str(err).split()))
    return text or type(err).__name__
