"""Data in and out: reading and validating scans, cohorts, MONAI preprocessing, the demo cohort.

Every problem with an input ends in ``ScanError`` (one file) or ``CohortError`` (the cohort),
both ``ValueError`` subclasses with a one-line message naming the file and the problem.

Names are loaded on first use, so that ``models.data.errors`` and ``models.data.options`` (the
preprocessing config) can be imported without nibabel, MONAI or torch (the gateway does).
"""

from importlib import import_module

_EXPORTS = {
    "Cohort": ".cohort", "CohortItem": ".cohort", "read_cohort": ".cohort",
    "make_demo_cohort": ".demo", "make_demo_counterfactuals": ".demo", "make_demo_slices": ".demo",
    "CohortError": ".errors", "QualityError": ".errors", "ScanError": ".errors",
    "load_scan": ".io", "scan_format": ".io", "write_png": ".io", "write_scan": ".io",
    "PreprocessConfig": ".options", "QCConfig": ".options",
    "LoadScan": ".preprocess", "build_transforms": ".preprocess", "load_tensors": ".preprocess",
    "make_dataset": ".preprocess", "target_affine": ".preprocess",
    "OutputFormat": ".settle", "output_format": ".settle", "settle_preprocess": ".settle",
    "format_summary": ".summary", "summarize": ".summary",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (the names _EXPORTS lists)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models.data' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
