"""The choice of torch threads (models/threads.py): affinity, cgroup quota, the user's setting,
a worker pool's share and the work's size; and the CLI and the workers applying it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.threads import (
    VOXELS_PER_THREAD,
    available_cpus,
    choose_threads,
    prefer_passive_waiting,
    spare_threads,
    training_threads,
)

EIGHT = range(8)
REPO = Path(__file__).resolve().parents[2]


def _quota_v2(root: Path, text: str) -> Path:
    (root / "cpu.max").write_text(text)
    return root


def _quota_v1(root: Path, quota: str, period: str = "100000") -> Path:
    (root / "cpu").mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(period + "\n")
    return root


def test_affinity_bounds_the_threads(tmp_path):
    assert choose_threads(environ={}, affinity=EIGHT, cgroup=tmp_path) == 8
    assert choose_threads(environ={}, affinity={3}, cgroup=tmp_path) == 1


@pytest.mark.parametrize(("text", "cpus"), [("150000 100000\n", 1), ("400000 100000\n", 4),
                                            ("50000 100000\n", 1), ("max 100000\n", 8)])
def test_a_cgroup_v2_quota_rounds_down_to_whole_cpus(tmp_path, text, cpus):
    assert choose_threads(environ={}, affinity=EIGHT, cgroup=_quota_v2(tmp_path, text)) == cpus


@pytest.mark.parametrize(("quota", "cpus"), [("200000", 2), ("-1", 8)])
def test_a_cgroup_v1_quota_counts_too(tmp_path, quota, cpus):
    assert available_cpus(EIGHT, _quota_v1(tmp_path, quota)) == cpus


def test_a_quota_above_the_affinity_does_not_add_cpus(tmp_path):
    assert available_cpus({0, 1}, _quota_v2(tmp_path, "800000 100000")) == 2


def test_the_users_setting_wins(tmp_path):
    quota = _quota_v2(tmp_path, "100000 100000")
    assert choose_threads(environ={"MCVAE_TORCH_THREADS": "3"}, affinity={0}, cgroup=quota) == 3
    assert choose_threads(environ={"OMP_NUM_THREADS": "5"}, affinity={0}, cgroup=quota) == 5
    assert choose_threads(environ={"OMP_NUM_THREADS": "4,2"}, affinity={0}, cgroup=quota) == 4
    both = {"MCVAE_TORCH_THREADS": "2", "OMP_NUM_THREADS": "6"}
    assert choose_threads(environ=both, affinity=EIGHT, cgroup=quota) == 2
    # 0 is the workers' "choose for me"
    assert choose_threads(environ={"MCVAE_TORCH_THREADS": "0"}, affinity=EIGHT, cgroup=tmp_path / "none") == 8


@pytest.mark.parametrize("value", ["lots", "-2", "1.5"])
def test_a_bad_setting_is_one_clear_error(tmp_path, value):
    with pytest.raises(ValueError, match=f"MCVAE_TORCH_THREADS='{value}': expected a whole number"):
        choose_threads(environ={"MCVAE_TORCH_THREADS": value}, affinity=EIGHT, cgroup=tmp_path)


def test_a_pool_divides_the_cpus_among_its_processes(tmp_path):
    assert choose_threads(processes=3, environ={}, affinity=EIGHT, cgroup=tmp_path) == 2
    assert choose_threads(processes=16, environ={}, affinity=EIGHT, cgroup=tmp_path) == 1
    quota = _quota_v2(tmp_path, "400000 100000")
    assert choose_threads(processes=2, environ={}, affinity=EIGHT, cgroup=quota) == 2
    with pytest.raises(ValueError, match="processes"):
        choose_threads(processes=0, environ={}, affinity=EIGHT, cgroup=tmp_path)


def test_small_work_gets_one_thread():
    demo = 8 * 32**3  # the demo profile's minibatch, in voxels
    standard = 8 * 64**3
    assert training_threads(8, demo) == 1
    assert training_threads(8, standard) == 2
    assert training_threads(8, 100 * VOXELS_PER_THREAD) == 8
    assert training_threads(8, None) == 8  # no cap without a size


def test_passive_waiting_unless_the_user_chose():
    environ: dict[str, str] = {}
    prefer_passive_waiting(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    prefer_passive_waiting(environ)
    assert environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_cli_uses_the_available_cpus_and_leaves_the_config_as_written(monkeypatch):
    import torch

    from mcvae_cli.main import _augment_config as augment_config
    from mcvae_cli.main import build_parser

    monkeypatch.delenv("MCVAE_TORCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        config = augment_config(build_parser().parse_args(["demo", "--out", "unused"]))
        # every CPU it may use, for the report's classifiers; a training caps its own (below)
        assert torch.get_num_threads() == available_cpus() and config.train.threads is None
        monkeypatch.setenv("MCVAE_TORCH_THREADS", "3")
        config = augment_config(build_parser().parse_args(["demo", "--out", "unused"]))
        assert torch.get_num_threads() == 3 and config.train.threads is None
    finally:
        torch.set_num_threads(before)


def test_a_training_caps_its_threads_by_its_minibatch_and_gives_them_back(monkeypatch):
    import torch

    from models import ModelConfig, SamplerConfig, TrainConfig, Trainer, build_model, build_sampler

    monkeypatch.delenv("MCVAE_TORCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    model = build_model(ModelConfig(data_shape=(1, 8, 8), arch="mlp", latent_dims=[2], hidden=(8,)))
    x = torch.rand(8, 1, 8, 8)

    def threads_while_training(**train) -> int:
        seen: list[int] = []
        trainer = Trainer(model, build_sampler(SamplerConfig(kind="none"), 2), x,
                          TrainConfig(pretrain_epochs=0, epochs=1, batch_size=4, **train))
        trainer.fit(on_step=lambda done, total: seen.append(torch.get_num_threads()))
        return seen[0]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert threads_while_training() == 1  # 4 x 64 voxels per minibatch: small work
        assert torch.get_num_threads() == 4  # given back for what follows (the classifiers)
        assert threads_while_training(threads=2) == 2  # the config's own count
        # the environment sets the process's count (a worker passes its pool's share so), not the
        # training's: the cap still applies
        monkeypatch.setenv("MCVAE_TORCH_THREADS", "3")
        assert threads_while_training() == 1
        assert training_threads(4, 100 * VOXELS_PER_THREAD) == 4
    finally:
        torch.set_num_threads(before)


def test_the_cli_refuses_a_bad_thread_setting_in_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MCVAE_TORCH_THREADS": "lots"}
    done = subprocess.run([sys.executable, "-c", "from mcvae_cli.main import run; run()", "train",
                           str(tmp_path / "cohort"), "--class", "AD", "--out", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == ("mcvae: error: MCVAE_TORCH_THREADS='lots': expected a whole number "
                                   "of threads >= 1")


def test_the_cli_makes_openmp_threads_wait_passively(tmp_path):
    # OpenMP reads the policy when torch loads, so main() must set it before any command imports torch.
    script = ("import os, sys; from mcvae_cli.main import main; "
              "main(['inspect', sys.argv[1]]); print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "none")], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.split() == ["PASSIVE", "False"]


def test_the_threads_a_training_leaves_idle_go_to_the_report_classifiers():
    demo_batch = 8 * 32**3  # a one-thread training: the second of two threads is idle meanwhile
    assert spare_threads(2, None, demo_batch) == 1
    assert spare_threads(2, None, 2 * VOXELS_PER_THREAD) == 0  # a training that uses both
    assert spare_threads(1, None, demo_batch) == 0  # a pool process's single CPU
    assert spare_threads(4, 3, demo_batch) == 1  # the config's train.threads wins over the cap
    assert spare_threads(2, 4, demo_batch) == 0
