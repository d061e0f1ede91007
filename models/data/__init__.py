"""Data in and out: reading and validating scans, cohorts, MONAI preprocessing, the demo cohort.

Every problem with an input ends in ``ScanError`` (one file) or ``CohortError`` (the cohort),
both ``ValueError`` subclasses with a one-line message naming the file and the problem.
"""

from .cohort import Cohort, CohortItem, format_summary, read_cohort, summarize
from .demo import make_demo_cohort, make_demo_slices
from .errors import CohortError, ScanError
from .io import load_scan, scan_format, write_scan
from .preprocess import (
    LoadScan,
    PreprocessConfig,
    build_transforms,
    load_tensors,
    make_dataset,
    target_affine,
)

__all__ = [
    "Cohort",
    "CohortError",
    "CohortItem",
    "LoadScan",
    "PreprocessConfig",
    "ScanError",
    "build_transforms",
    "format_summary",
    "load_scan",
    "load_tensors",
    "make_dataset",
    "make_demo_cohort",
    "make_demo_slices",
    "read_cohort",
    "scan_format",
    "summarize",
    "target_affine",
    "write_scan",
]
