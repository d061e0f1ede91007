"""Operations commands through the real console entry point, against real databases."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

REDIS = "redis://127.0.0.1:6379/0"


def _mcvae(args, env_extra, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCVAE_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "mcvae_cli.main", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


@pytest.fixture()
def sqlite_env(tmp_path):
    return {"MCVAE_DATA_DIR": str(tmp_path / "data")}


def test_db_upgrade_then_keys_lifecycle(sqlite_env):
    up = _mcvae(["db", "upgrade"], sqlite_env)
    assert up.returncode == 0 and "up to date" in up.stdout, up.stderr
    created = _mcvae(["keys", "create", "--lab", "neuro-lab"], sqlite_env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("mcvae_") and len(token) > 40
    listed = _mcvae(["keys", "list"], sqlite_env)
    key_id = token.split("_")[1]
    assert key_id in listed.stdout and "neuro-lab" in listed.stdout and token not in listed.stdout
    assert _mcvae(["keys", "revoke", key_id], sqlite_env).returncode == 0
    assert "active" not in _mcvae(["keys", "list", "--all"], sqlite_env).stdout.split(key_id)[1].splitlines()[0]
    again = _mcvae(["keys", "revoke", key_id], sqlite_env)
    assert again.returncode == 2 and "no active key" in again.stderr


def test_keys_reject_a_bad_lab_name(sqlite_env):
    bad = _mcvae(["keys", "create", "--lab", "../etc"], sqlite_env)
    assert bad.returncode == 2 and "lab" in bad.stderr and bad.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [["db", "upgrade"], ["keys", "create", "--lab", "neuro"]],
                         ids=["db-upgrade", "keys-create"])
def test_an_unreachable_database_is_one_line_naming_it(tmp_path, args):
    # A role that does not exist on the real PostgreSQL: what a wrong MCVAE_DATABASE_URL gives.
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    env = {"MCVAE_DATA_DIR": str(tmp_path), "MCVAE_DATABASE_URL": f"postgresql://{role}:pw@127.0.0.1:5432/test"}
    proc = _mcvae(args, env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("mcvae: error: database postgresql+psycopg://***@127.0.0.1:5432/test "
                                  "not reachable:"), proc.stderr
    assert role in proc.stderr and ":pw@" not in proc.stderr


def test_doctor_names_what_is_missing_and_how_to_fix_it(tmp_path):
    # Real PostgreSQL and Redis, but no worker listens on this (fresh) queue prefix.
    env = {"MCVAE_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
           "MCVAE_BROKER_URL": REDIS, "MCVAE_QUEUE_PREFIX": f"doctor-{uuid.uuid4().hex[:8]}-",
           "MCVAE_REDIS_KEY_PREFIX": f"doctor-{uuid.uuid4().hex[:8]}:", "MCVAE_DATA_DIR": str(tmp_path)}
    proc = _mcvae(["doctor", "--timeout", "1"], env)
    assert "[ok] database reachable" in proc.stdout, proc.stdout + proc.stderr
    assert "[ok] broker reachable" in proc.stdout
    assert "[FAIL] at least one worker answers" in proc.stdout
    assert proc.returncode == 1 and "start one with 'mcvae worker'" in proc.stdout
    bad = _mcvae(["doctor", "--timeout", "1"], {"MCVAE_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
                                                  "MCVAE_BROKER_URL": "redis://127.0.0.1:1/0",
                                                  "MCVAE_DATA_DIR": str(tmp_path)})
    assert bad.returncode == 1
    assert "[FAIL] database reachable" in bad.stdout and "[FAIL] broker reachable" in bad.stdout
    assert "MCVAE_DATABASE_URL" in bad.stdout and "MCVAE_BROKER_URL" in bad.stdout


def test_worker_ping_says_why_in_one_line_never_a_traceback(tmp_path):
    for env, why in (({"MCVAE_DATA_DIR": str(tmp_path)}, "no worker started by `mcvae serve`"),
                     ({"MCVAE_DATA_DIR": str(tmp_path), "MCVAE_BROKER_URL": "redis://127.0.0.1:1/0"},
                      "cannot ask the workers")):
        proc = _mcvae(["worker-ping", "--timeout", "1"], env)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith("mcvae worker-ping: ") and why in proc.stderr
