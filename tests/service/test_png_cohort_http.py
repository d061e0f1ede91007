"""Issue 25, item 1, over HTTP: a zipped class-folder cohort of 28 x 28 8-bit PNGs, augmented
through the gateway, comes back as 28 x 28 8-bit PNGs: the real images equal the uploaded ones
pixel for pixel, the manifest names PNG paths, the report montage is upright. Images of
different sizes fail the job with one line naming ``target_shape``."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.png_images import assert_block_top_left, assert_montage_upright, garment
from tests.sse import read_sse

from .test_bad_requests import _upload, _zip

pytestmark = pytest.mark.slow

# The CLI test's tiny 2-D run (tests/cli/test_png_cohort.py): a few steps.
# generator aggregate, as there: a model of 12 steps moves a variation too little to deliver it.
TINY_2D = {"generator": "aggregate", "preprocess": {"spatial_dims": 2}, "model": {"channels": [4, 8], "latent_dims": [4]},
           "sampler": {"kind": "mala", "n_steps": 2}, "train": {"batch_size": 4},
           "pretrain_steps": 12, "check_steps": 10, "mcmc_steps": 4}


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _pixels(data: bytes) -> tuple[Image.Image, np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image, np.asarray(image)


@pytest.fixture(scope="module")
def png_members() -> dict[str, bytes]:
    """8 shirts and 4 tops, in one top folder as a file manager zips a folder."""
    rng = np.random.default_rng(0)
    return {f"garments/{label}/{label}_{k:02d}.png": _png(garment(rng))
            for label, n in (("shirt", 8), ("top", 4)) for k in range(n)}


def _augment(c, members: dict[str, bytes]) -> tuple[dict, list]:
    r = _upload(c, _zip(members), wait=60)
    assert r.status_code == 201, r.text
    r = c.post("/v1/augmentations", json={"dataset": r.json()["id"], "config": TINY_2D})
    assert r.status_code == 202, r.text
    with c.stream("GET", r.json()["events_url"], timeout=600) as stream:
        events = read_sse(stream)
    return r.json(), events


@pytest.fixture(scope="module")
def png_result(deployment, png_members) -> zipfile.ZipFile:
    with deployment.client() as c:
        job, events = _augment(c, png_members)
        assert events[-1][0] == "end" and events[-1][1]["state"] == "succeeded", events[-1]
        augmentation = c.get(f"/v1/augmentations/{job['id']}").json()
        assert augmentation["synthetic_counts"] == {"shirt": 0, "top": 4}, augmentation
        result = c.get(augmentation["result_url"])
        assert result.status_code == 200, result.text
    return zipfile.ZipFile(io.BytesIO(result.content))


def _manifest(archive: zipfile.ZipFile) -> tuple[str, list[dict[str, str]]]:
    """The folder the result's members lie under ('' or 'name/') and the manifest's rows."""
    name = next(n for n in archive.namelist() if n.endswith("manifest.csv"))
    root = name[: -len("manifest.csv")]
    return root, list(csv.DictReader(io.StringIO(archive.read(name).decode())))


def test_synthetic_images_come_back_as_28x28_8bit_pngs_named_in_the_manifest(png_result):
    root, rows = _manifest(png_result)
    synthetic = [r for r in rows if r["synthetic"] == "true"]
    assert len(synthetic) == 4 and {r["label"] for r in synthetic} == {"top"}, synthetic
    for row in synthetic:
        assert row["path"].endswith(".png"), row
        image, _ = _pixels(png_result.read(root + row["path"]))
        assert image.format == "PNG" and image.mode == "L" and image.size == (28, 28)
    assert all(r["path"].endswith(".png") for r in rows), rows
    assert not [n for n in png_result.namelist() if n.endswith((".nii.gz", ".nii"))]


def test_real_images_equal_the_uploaded_ones_pixel_for_pixel(png_result, png_members):
    root, rows = _manifest(png_result)
    real = [r for r in rows if r["synthetic"] == "false"]
    uploaded = {name.split("/", 1)[1]: data for name, data in png_members.items()}  # label/name.png
    assert sorted(r["source_path"] for r in real) == sorted(uploaded)  # named by their place in the upload
    for row in real:
        assert row["path"] == f"real/{row['source_path']}", row
        written, given = png_result.read(root + row["path"]), uploaded[row["source_path"]]
        out_image, out_pixels = _pixels(written)
        _, in_pixels = _pixels(given)
        assert out_image.format == "PNG" and out_image.mode == "L" and out_image.size == (28, 28)
        # 8-bit in, the cohort-wide 0..255 scale, 8-bit out: the same grey levels, not transposed
        np.testing.assert_array_equal(out_pixels, in_pixels)
        assert_block_top_left(out_pixels)


def test_the_report_montage_is_upright(png_result):
    root, _ = _manifest(png_result)
    montage = png_result.read(root + "report/montage_top.png")
    assert_montage_upright(montage, n_real=4)  # the real tops: the bright block top-left


def test_images_of_different_sizes_fail_the_job_naming_target_shape(deployment):
    rng = np.random.default_rng(1)
    members = {f"mixed/{label}/{k}.png": _png(garment(rng, size))
               for k, (label, size) in enumerate((("a", (28, 28)), ("a", (30, 28)), ("a", (28, 28)),
                                                  ("b", (28, 28)), ("b", (28, 28)), ("b", (28, 28))))}
    with deployment.client() as c:
        r = _upload(c, _zip(members), wait=60)
        assert r.status_code == 201, r.text  # each image is readable; the sizes matter to a model
        assert r.json()["spatial_dims"] == 2 and r.json()["classes"] == {"a": 3, "b": 3}
        r = c.post("/v1/augmentations", json={"dataset": r.json()["id"], "config": TINY_2D})
        assert r.status_code == 202, r.text
        with c.stream("GET", r.json()["events_url"], timeout=300) as stream:
            end = read_sse(stream)[-1][1]
        assert end["state"] == "failed", end
        job = c.get(f"/v1/jobs/{r.json()['id']}").json()
    message = end["message"]
    assert job["state"] == "failed" and job["error"] == message, job
    assert "\n" not in message and "Traceback" not in message, message
    assert "scans differ in size (0.png: 28x28, 1.png: 28x30)" in message, message
    assert "set preprocess.target_shape" in message, message
    assert str(deployment.data_dir) not in message and "<store>" not in message, message
