"""GET /v1/usage: the storage a lab's artifacts hold, and nothing of another lab's."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_usage_counts_the_labs_dataset_bytes_only(deployment, dataset):
    with deployment.client() as c:
        mine = c.get("/v1/usage")
    assert mine.status_code == 200, mine.text
    figure = mine.json()
    assert figure["lab"] == "lab-a"
    stored = sum(p.stat().st_size for p in
                 (deployment.data_dir / "artifacts" / "datasets" / dataset["id"] / "data").rglob("*")
                 if p.is_file())
    assert figure["bytes"]["datasets"] >= stored > 0
    assert figure["bytes"]["uploads"] == 0  # the ingest removed the upload copy itself
    assert figure["total_bytes"] == sum(figure["bytes"].values())
    with deployment.client(lab="lab-b") as c:
        theirs = c.get("/v1/usage").json()
    assert theirs["lab"] == "lab-b" and theirs["bytes"]["datasets"] < figure["bytes"]["datasets"]
    with deployment.client(lab=None) as c:
        assert c.get("/v1/usage").status_code == 401
