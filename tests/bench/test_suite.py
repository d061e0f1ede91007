"""`python -m bench`: every listed benchmark is a script in bench/, and the listing names them all;
`--quick` (bench/common.parse_args)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS, listing, main
from bench.common import parse_args

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_every_listed_benchmark_is_a_script():
    missing = [name for name in BENCHMARKS if not (BENCH / f"{name}.py").is_file()]
    assert not missing, missing


def test_listing_names_each_benchmark_with_its_question(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.strip() == listing().strip()
    for name, question in BENCHMARKS.items():
        assert name in out and question in out


def test_unknown_name_is_refused(capsys):
    assert main(["no_such_bench"]) == 2


def _parse(monkeypatch, argv: list[str]):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100)
    monkeypatch.setattr(sys, "argv", ["bench", *argv])
    return parse_args(parser, {"seeds": [0], "steps": 2})


def test_quick_sets_its_values_where_the_command_line_gave_none(monkeypatch):
    full = _parse(monkeypatch, [])
    assert (full.quick, full.seeds, full.steps) == (False, [0, 1, 2], 100)
    quick = _parse(monkeypatch, ["--quick", "--steps", "7"])
    assert (quick.quick, quick.seeds, quick.steps) == (True, [0], 7)


def test_quick_settings_must_name_options_of_the_parser(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench"])
    with pytest.raises(KeyError, match="n_seeds"):
        parse_args(argparse.ArgumentParser(), {"n_seeds": 1})
