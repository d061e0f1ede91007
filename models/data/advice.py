"""How a refusal names the setting that gets around it, phrased per front end: one table.

Library messages name the config setting (``setting("nan_to_zero")``): that is what a job's
config and the HTTP API take. The CLI turns each such phrase into its flag (``for_cli``) when it
prints the one error line. Torch-free: the gateway, the workers and the CLI all import it.
"""

from __future__ import annotations

# setting -> (the config's words, the CLI's words)
SETTINGS = {
    "nan_to_zero": ("set config preprocess: {nan_to_zero: true}",
                    "pass --nan-to-zero (config preprocess: {nan_to_zero: true})"),
    "skip_bad_scans": ("set config qc: {skip_bad_scans: true}",
                       "pass --skip-bad-scans (config qc: {skip_bad_scans: true})"),
}


def setting(name: str) -> str:
    """The words that name setting ``name`` in a library or service message."""
    return SETTINGS[name][0]


def for_cli(text: str) -> str:
    """``text`` with every setting named as the CLI's flag."""
    for config_words, cli_words in SETTINGS.values():
        text = text.replace(config_words, cli_words)
    return text
