"""Uploads judged by their first bytes, and malformed archives named as such (issue 23 item 5,
issue 25 item 5), over real HTTP: a non-archive is refused before its body has even arrived,
a lone scan is told how to send a cohort, and an archive whose names the file system cannot
hold is a 422 naming the member, never a 503 "storage unavailable"."""

from __future__ import annotations

import gzip
import io
import socket
import tarfile
import zipfile

import nibabel as nib
import numpy as np
import pytest

from .test_bad_requests import _store_entries

pytestmark = pytest.mark.slow


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _targz(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _nifti_bytes() -> bytes:
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    return image.to_bytes()


def test_a_non_archive_is_refused_from_its_first_bytes_before_the_body_ends(deployment):
    """1 MiB of 3 declared is sent, then the client waits: the 415 comes without the rest."""
    before = _store_entries(deployment)
    host, port = deployment.url.removeprefix("http://").split(":")
    declared = 3 << 20  # under the test deployment's 4 MiB limit: not a 413 from the header
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall((f"POST /v1/datasets HTTP/1.1\r\nHost: {host}\r\n"
                      f"Authorization: Bearer {deployment.keys['lab-a']}\r\n"
                      f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n").encode())
        sock.sendall(b"%PDF-1.7 " + b"x" * ((1 << 20) - 9))
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)  # a timeout here (15 s) means the server waited for the rest
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 415"), reply[:300]
    assert b"not a .zip or .tar.gz archive" in reply and b"judged by its first bytes" in reply
    assert _store_entries(deployment) == before  # nothing kept, no scratch left


@pytest.mark.parametrize("form", ["raw", "multipart"])
def test_a_single_scan_is_told_how_to_send_a_cohort(deployment, form):
    scan = _nifti_bytes()
    before = _store_entries(deployment)
    with deployment.client() as c:
        for name, body, kind in (("sub-1.nii.gz", gzip.compress(scan), ".nii.gz"), ("sub-1.nii", scan, ".nii")):
            if form == "raw":
                r = c.post("/v1/datasets", content=body, headers={"Content-Type": "application/gzip"})
            else:
                r = c.post("/v1/datasets", files={"file": (name, body, "application/octet-stream")})
            assert r.status_code == 415, r.text
            detail = r.json()["detail"]
            assert f"single scan ({kind}), not a cohort" in detail, detail
            assert "one folder per class" in detail and "zip -r" in detail and "manifest.csv" in detail
            assert "tar archive" not in detail and "checksum" not in detail  # not "malformed tar: bad checksum"
    assert _store_entries(deployment) == before


def test_a_gzip_that_holds_no_tar_is_refused_at_once(deployment):
    with deployment.client() as c:
        r = c.post("/v1/datasets", content=gzip.compress(b"path,label\n" * 200),
                   headers={"Content-Type": "application/gzip"})
    assert r.status_code == 415 and "holds no tar archive" in r.json()["detail"], r.text


@pytest.mark.parametrize("pack", [_zip, _targz], ids=["zip", "tar.gz"])
def test_malformed_archives_are_422_naming_the_problem_not_503(deployment, pack):
    scan = gzip.compress(_nifti_bytes())
    long_name = "CN/" + "s" * 300 + ".nii.gz"
    cases = [
        ([("AD", b"a file"), ("AD/x.nii.gz", scan)], "'AD/x.nii.gz' lies in folder 'AD', which the archive also holds as a file"),
        ([("AD/x.nii.gz", scan), ("AD", b"a file")], "'AD' is also a folder of the same name"),
        ([("CN/a.nii.gz", scan), (long_name, scan)], "has a name part of 307 characters; at most 255 bytes"),
    ]
    before = _store_entries(deployment)
    with deployment.client() as c:
        for members, message in cases:
            r = c.post("/v1/datasets", content=pack(members), headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 422, (members[:1], r.text)
            assert r.json()["code"] == "invalid" and message in r.json()["detail"], r.json()
    assert _store_entries(deployment) == before
