"""The storage sweeper against real job records (SQLite) and a real artifact store: what it
removes, what it must leave alone, and the per-lab storage figure."""

from __future__ import annotations

import datetime as dt
import os
import time

from sqlalchemy import update

import workers
from workers import db, runner, sweeper, usage
from workers.records import JobRecord, utcnow

SAMPLE = {"model": "model-abc", "n": 2}


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    for folder, _, files in os.walk(path):
        for name in files:
            os.utime(os.path.join(folder, name), (then, then))
        os.utime(folder, (then, then))


def _end(job_id: str, state: str, hours_ago: float) -> None:
    with db.session() as s:
        s.execute(update(JobRecord).where(JobRecord.id == job_id).values(
            state=state, run_token=None, finished_at=utcnow() - dt.timedelta(hours=hours_ago)))


def test_a_sweep_removes_debris_and_leaves_live_work_alone(service_env, demo_cohort):
    service_env(MCVAE_CHECKPOINT_RETENTION="3600", MCVAE_SCRATCH_RETENTION="3600",
                MCVAE_UPLOAD_RETENTION="0", MCVAE_CACHE_RETENTION="60")
    settings = workers.get_settings()
    store = workers.ArtifactStore(settings.artifacts)
    live, dead = (workers.submit("sample", SAMPLE) for _ in range(2))
    live_run = runner.claim(live.id, "w1@test", settings)
    dead_run = runner.claim(dead.id, "w2@test", settings)
    runner.finish(dead.id, dead_run.token, "failed", "boom", error="boom")  # its run is over

    writers = []  # held open: a write in progress (or a dead worker's leftover)

    def staging_of(job_id: str, token: str) -> str:
        writers.append(workers.ArtifactStore(settings.artifacts, run_tag=token).writer("output", f"output-{job_id}"))
        folder = writers[-1].__enter__()
        (folder / "scan.nii.gz").write_bytes(b"x" * 10)
        return folder.parent.name

    in_progress, leftover = staging_of(live.id, live_run.token), staging_of(dead.id, dead_run.token)
    staging = store.root / ".staging"
    old_upload, recent_upload = staging / "scratch-old", staging / "scratch-recent"
    for folder in (old_upload, recent_upload):
        (folder / "upload").mkdir(parents=True)
        (folder / "upload" / "part.zip").write_bytes(b"z" * 100)
    _age(old_upload, 2 * 3600)

    # Checkpoints: of the running job (kept), of a job failed long ago (removed), of a job
    # cancelled a moment ago (kept for the retention), of a job that no longer exists (removed).
    failed_long_ago, cancelled_now = (workers.submit("sample", SAMPLE) for _ in range(2))
    _end(failed_long_ago.id, "failed", hours_ago=2)
    _end(cancelled_now.id, "cancelled", hours_ago=0)
    ghost = "00000000-0000-4000-8000-000000000000"
    checkpoints = {}
    for name, job_id in [("live", live.id), ("failed", failed_long_ago.id),
                         ("cancelled", cancelled_now.id), ("ghost", ghost)]:
        checkpoints[name] = store.put_file("checkpoint", __file__, name="state.pt",
                                           artifact_id=f"checkpoint-{job_id}-000000020").id

    # Upload copies: one an ingest job still has to read (kept), one nobody needs (removed).
    needed = store.put_dir("dataset", demo_cohort, artifact_id="dataset-upload-needed").id
    ingest = workers.submit("ingest", {"source": needed})
    spare = store.put_dir("dataset", demo_cohort, artifact_id="dataset-upload-spare").id

    # Preprocessing caches: of an existing dataset (kept), of a deleted one (removed).
    kept_data = store.put_dir("dataset", demo_cohort).id
    for dataset_id in (kept_data, "dataset-deleted"):
        (store.root / ".cache" / dataset_id).mkdir(parents=True)
        (store.root / ".cache" / dataset_id / "0.pt").write_bytes(b"t")
        _age(store.root / ".cache" / dataset_id, 120)

    removed = sweeper.sweep()

    assert removed["staging"] == sorted([f".staging/{leftover}", ".staging/scratch-old"])
    assert {p.name for p in staging.iterdir()} == {in_progress, "scratch-recent"}
    assert sorted(removed["checkpoints"]) == sorted([checkpoints["failed"], checkpoints["ghost"]])
    assert store.exists(checkpoints["live"]) and store.exists(checkpoints["cancelled"])
    assert removed["uploads"] == [spare] and store.exists(needed)
    assert removed["caches"] == [".cache/dataset-deleted"]
    assert (store.root / ".cache" / kept_data).is_dir()
    assert not any((store.root / ".trash").iterdir())
    assert workers.get(ingest.id).state == "queued"  # records are never touched

    # Once the run is over, its staging goes too; a second sweep finds nothing else.
    runner.finish(live.id, live_run.token, "succeeded", "done")
    again = sweeper.sweep()
    assert again["staging"] == [f".staging/{in_progress}"]
    assert again["checkpoints"] == [checkpoints["live"]]  # superseded by the job's success



def test_the_upload_copy_of_an_ended_ingest_is_swept(service_env, demo_cohort):
    """The gateway does not remove upload copies on reads (service/resources.py): an upload
    whose ingest failed or was cancelled goes with the sweep; one a running ingest reads stays."""
    service_env(MCVAE_UPLOAD_RETENTION="0")
    store = workers.ArtifactStore(workers.get_settings().artifacts)
    uploads = {}
    for state in ("failed", "cancelled", "running"):
        uploads[state] = store.put_dir("dataset", demo_cohort, artifact_id=f"dataset-upload-{state}").id
        job = workers.submit("ingest", {"source": uploads[state]})
        if state == "running":
            with db.session() as s:
                s.execute(update(JobRecord).where(JobRecord.id == job.id).values(state="running"))
        else:
            _end(job.id, state, hours_ago=0)

    removed = sweeper.sweep()

    assert sorted(removed["uploads"]) == sorted([uploads["failed"], uploads["cancelled"]])
    assert store.exists(uploads["running"])
    assert not store.exists(uploads["failed"]) and not store.exists(uploads["cancelled"])

def test_storage_per_owner_counts_each_kind_of_artifact(service_env, demo_cohort):
    service_env()
    store = workers.ArtifactStore(workers.get_settings().artifacts)
    mine = workers.submit("ingest", {"source": str(demo_cohort)}, owner="lab-a")
    theirs = workers.submit("ingest", {"source": str(demo_cohort)}, owner="lab-b")
    for job in (mine, theirs):
        with db.session() as s:
            s.execute(update(JobRecord).where(JobRecord.id == job.id).values(
                state="succeeded", artifacts=[f"dataset-{job.id}"]))
        store.put_dir("dataset", demo_cohort, artifact_id=f"dataset-{job.id}")
    sampled = workers.submit("sample", SAMPLE, owner="lab-a")
    with db.session() as s:
        s.execute(update(JobRecord).where(JobRecord.id == sampled.id).values(
            state="succeeded", artifacts=[f"output-{sampled.id}"]))
    store.put_file("output", __file__, artifact_id=f"output-{sampled.id}")

    cohort_bytes = sum(p.stat().st_size for p in demo_cohort.rglob("*") if p.is_file())
    figure = usage.storage(owner="lab-a")
    assert figure["datasets"] == cohort_bytes and figure["outputs"] == os.path.getsize(__file__)
    assert figure["models"] == figure["checkpoints"] == 0
    assert figure["total"] == cohort_bytes + os.path.getsize(__file__)
    assert usage.storage(owner="lab-b")["total"] == cohort_bytes
