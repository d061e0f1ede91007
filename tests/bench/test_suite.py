"""`python -m bench`: every listed benchmark is a script in bench/, and the listing names them all."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import BENCHMARKS, listing, main

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
