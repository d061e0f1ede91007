"""Pieces of the gateway on their own: archive checks, rate limiting, path scrubbing, and the
rule that the gateway never loads torch."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from service.errors import ApiError
from service.ratelimit import RateLimiter
from service.uploads import Limits, member_path, unpack

LIMITS = Limits(max_upload_bytes=1 << 20, max_files=10, max_unpacked_bytes=1 << 20)


def test_the_gateway_never_imports_torch():
    code = ("import sys, service.app, service.serve, service.keys; service.app.create_app(); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "C:/x", "a\\..\\..\\x", "a\x00b", ""])
def test_unsafe_member_names_are_refused(name):
    with pytest.raises(ApiError) as err:
        member_path(name)
    assert err.value.status == 422


def test_member_names_are_normalised_and_junk_skipped():
    assert member_path("./demo//CN/a.nii.gz") == "demo/CN/a.nii.gz"
    assert member_path("__MACOSX/demo/._a.nii.gz") is None
    assert member_path("demo/.DS_Store") is None


def _lying_zip(declared: int, actual: bytes) -> bytes:
    """A zip whose headers declare ``declared`` bytes for a member that inflates to more."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("CN/a.nii", actual)
    raw = bytearray(buf.getvalue())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # uncompressed size fields
        at = raw.find(signature)
        raw[at + offset:at + offset + 4] = struct.pack("<I", declared)
    return bytes(raw)


def test_zip_members_larger_than_declared_are_refused(tmp_path):
    archive = tmp_path / "lie.zip"
    archive.write_bytes(_lying_zip(100, bytes(500_000)))
    with pytest.raises(ApiError) as err:
        unpack(archive, tmp_path / "out", LIMITS)
    assert err.value.status == 422  # zipfile stops at the declared size; the CRC then fails


def test_member_count_and_unpacked_size_are_limited(tmp_path):
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(11):
            zf.writestr(f"CN/{i}.nii", b"x")
    with pytest.raises(ApiError, match="more than 10 members") as err:
        unpack(many, tmp_path / "a", LIMITS)
    assert err.value.status == 413
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("CN/a.nii", bytes(600_000))
        zf.writestr("AD/a.nii", bytes(600_000))
    with pytest.raises(ApiError, match="unpacks to more than") as err:
        unpack(big, tmp_path / "b", LIMITS)
    assert err.value.status == 413


def test_a_wrapped_cohort_is_found_one_level_down(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("demo/CN/a.nii", b"1")
        zf.writestr("demo/AD/b.nii", b"2")
        zf.writestr("__MACOSX/demo/._a.nii", b"junk")
    root = unpack(archive, tmp_path / "out", LIMITS)
    assert sorted(p.name for p in root.iterdir()) == ["AD", "CN"]


def test_token_bucket_allows_a_burst_then_the_rate():
    limiter = RateLimiter(per_minute=60, burst=3)
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("k")
    assert 0.9 < wait <= 1.0
    assert limiter.take("other") == 0.0


def test_server_paths_are_scrubbed_from_messages(tmp_path):
    from service.resources import public_text
    from workers import ArtifactStore

    store = ArtifactStore(tmp_path)
    message = f"{tmp_path}/.staging/dataset-x.ab12/data/AD/sub-3.nii.gz: not a NIfTI file"
    assert public_text(message, store) == "AD/sub-3.nii.gz: not a NIfTI file"
    # the upload's own folder (issue 25: "<store>/datasets/dataset-upload-.../data: no scans found")
    empty = f"{tmp_path}/datasets/dataset-upload-1f2e/data: no scans found (expected class sub-folders)"
    assert public_text(empty, store) == "the upload: no scans found (expected class sub-folders)"
    assert str(tmp_path) not in public_text(f"cannot write {tmp_path}/outputs", store)
    leaky = ("gave up: Error 111 connecting to redis://:pw@10.0.0.7:6379/0 (redis:6379); "
             "[Errno 28] No space left: '/srv/cache/x.pt'")
    assert public_text(leaky, store) == ("gave up: Error 111 connecting to <address> (<address>); "
                                         "[Errno 28] No space left: '<server path>'")


@pytest.mark.slow
def test_rate_limit_is_429_with_retry_after(deployment):
    import asyncio

    import httpx

    from service.app import create_app
    from service.settings import ServiceSettings

    app = create_app(ServiceSettings(rate_limit_per_minute=6, rate_limit_burst=2), configure_logs=False)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                     headers={"X-API-Key": deployment.keys["lab-a"]}) as c:
            return [await c.get("/v1/jobs", params={"limit": 1}) for _ in range(3)]

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert int(responses[2].headers["retry-after"]) >= 1
    assert "rate limit" in responses[2].json()["detail"]
