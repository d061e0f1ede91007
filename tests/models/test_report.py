"""The report's pictures read right: row labels clear of the panels, orientation letters, an
acceptance target line, and the ELBO per voxel in nats (higher is better)."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from models.report import curves_figure, montage_figure, training_curves


def _volume(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((12, 14, 10)).astype(np.float32)


def test_montage_row_labels_sit_beside_the_panels_and_panels_carry_orientation_letters():
    fig = montage_figure([_volume(i) for i in range(4)], [_volume(10 + i) for i in range(4)], "class AD")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.texts if t.get_text() in ("real", "synthetic")]
    assert {t.get_text() for t in labels} == {"real", "synthetic"}
    panels = [ax.get_window_extent(renderer) for ax in fig.axes]
    for label in labels:
        box = label.get_window_extent(renderer)
        assert box.x0 >= 0 and not any(box.overlaps(p) for p in panels), label.get_text()
    letters = [[t.get_text() for t in ax.texts] for ax in fig.axes]
    planes = [ax.get_title() for ax in fig.axes[:3]]
    assert planes == ["#1 axial", "coronal", "sagittal"]
    assert letters[0] == ["L", "R"] and letters[1] == ["L", "R"] and letters[2] == ["P", "A"]
    assert all(len(t) == 2 for t in letters)
    plt.close(fig)


RECORDS = [{"epoch": e, "phase": 1 if e < 3 else 2, "bits_per_dim": -2.0 + 0.1 * e, "accept": None if e < 3 else 0.5,
            "beta": None if e < 3 else 1.0, "step_size": None if e < 3 else 0.1} for e in range(6)]


def test_curves_show_elbo_per_voxel_in_nats_and_the_acceptance_target(tmp_path):
    fig = curves_figure(RECORDS, "class AD", target_accept=0.574)
    elbo_ax, accept_ax = fig.axes[0], fig.axes[1]
    assert "ELBO per voxel (nats" in elbo_ax.get_title()
    y = elbo_ax.lines[0].get_ydata()
    np.testing.assert_allclose(y, [-(-2.0 + 0.1 * e) * math.log(2) for e in range(6)])  # positive here
    targets = [ln for ln in accept_ax.lines if isinstance(ln, Line2D) and set(ln.get_ydata()) == {0.574}]
    assert len(targets) == 1 and "target 0.574" in accept_ax.get_legend().get_texts()[0].get_text()
    plt.close(fig)
    assert training_curves(RECORDS, tmp_path / "c.png", "x", 0.65).stat().st_size > 0
