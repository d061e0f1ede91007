"""What operators meet (issue 10, item 10): /docs that works with no internet, 404 messages
whole, and the permissions of the job database and of outputs."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _get(*paths: str) -> list[httpx.Response]:
    from service.app import create_app
    from service.settings import ServiceSettings

    app = create_app(ServiceSettings(), configure_logs=False)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as c:
            return [await c.get(p) for p in paths]

    return asyncio.run(go())


def test_docs_load_swagger_ui_from_the_gateway_not_a_cdn():
    [page] = _get("/docs")
    assert page.status_code == 200
    linked = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", page.text) + re.findall(r"url:\s*'([^']+)'", page.text)
    assert linked and not [u for u in linked if "//" in u], linked  # nothing from another host
    assets = [u for u in linked if u.endswith((".js", ".css", ".png"))]
    assert {Path(u).name for u in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    served = _get(*assets, "/openapi.json")
    assert all(r.status_code == 200 for r in served), [(r.url, r.status_code) for r in served]
    assert len(served[[Path(u).name for u in assets].index("swagger-ui-bundle.js")].content) > 500_000
    assert served[-1].json()["openapi"].startswith("3.1")  # which Swagger UI 5 renders (4 did not)


@pytest.mark.slow
def test_not_found_messages_keep_their_closing_quote(deployment):
    with deployment.client() as c:
        assert c.get("/v1/jobs/not-a-job").json()["detail"] == "no job 'not-a-job'"
        assert c.get("/v1/datasets/dataset-nope").json()["detail"] == "no dataset 'dataset-nope'"


def test_the_sqlite_job_database_is_0640_in_a_0750_folder(tmp_path):
    data = tmp_path / "data"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MCVAE_")},
           "MCVAE_DATA_DIR": str(data), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "mcvae_cli.main", "db", "upgrade"], env=env, check=True,
                   capture_output=True, cwd=REPO)
    assert stat.S_IMODE(data.stat().st_mode) == 0o750
    assert stat.S_IMODE((data / "jobs.sqlite").stat().st_mode) == 0o640
    (data / "jobs.sqlite").chmod(0o666)  # an older database, made before this rule
    subprocess.run([sys.executable, "-m", "mcvae_cli.main", "db", "upgrade"], env=env, check=True,
                   capture_output=True, cwd=REPO)
    assert stat.S_IMODE((data / "jobs.sqlite").stat().st_mode) == 0o640


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_output_scans_follow_the_umask(tmp_path, umask, mode):
    from models.data import write_scan

    old = os.umask(umask)
    try:
        scan = write_scan(tmp_path / "out" / "a.nii.gz", np.zeros((4, 4, 4)), np.eye(4))
    finally:
        os.umask(old)
    assert stat.S_IMODE(scan.stat().st_mode) == mode
