"""What every augmentation report says about its synthetic scans, measured rather than assumed.

Per class that got synthetic scans:

- *sharpness*: gradient energy of the synthetic scans over that of the class's real train scans
  (``models.report.gradient_energy``); outside [0.9, 1.1] a classifier can learn the blur (or the
  grain) instead of the class;
- *fidelity gate*: a classifier two-sample test, real train scans of the class against the
  delivered synthetic ones, cross-validated (``models.classifier.two_sample_auroc``); at 0.8 or
  above they are easy to tell apart; and the share of synthetic scans that a reference classifier,
  trained on the real train split, assigns to the class;
- *utility* (``check_utility``): k-fold on the real train split with and without the synthetic
  scans (``models.classifier.utility_check``), so a lab learns from the report, not later, when
  the scans did not help its classifier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .classifier import (
    share_called,
    train_classifier,
    train_without,
    two_sample_auroc,
    utility_check,
    utility_folds,
)
from .options import AugmentConfig
from .report import gradient_energy
from .training import TrainingCancelled

SHARPNESS_BAND = (0.9, 1.1)
TWO_SAMPLE_WARNING = 0.8


class ClassifierChecks:
    """``class_metrics(label, draws)`` for each class, sharing one reference classifier and one
    without-synthetic arm of the utility check. Those see only real scans, so
    ``start_real_only(threads)`` can train them on a background thread while the generative model
    fits (a VAE training of small minibatches leaves CPUs idle: ``models.threads``); ``close()``
    tells that thread to stop after its current classifier."""

    def __init__(self, x: Tensor, labels: list[str], train_idx: list[int], config: AugmentConfig,
                 progress: Callable[[str, float], None], should_stop: Callable[[], bool] | None = None):
        self.x, self.labels, self.train_idx, self.config = x, labels, train_idx, config
        self.progress, self.should_stop = progress, should_stop
        self.classes = sorted({labels[i] for i in train_idx})
        self.y = torch.tensor([self.classes.index(labels[i]) for i in train_idx], dtype=torch.long)
        smallest = min((int((self.y == k).sum()) for k in range(len(self.classes))), default=0)
        self.n_folds = min(self.config.utility_folds, smallest)
        self._reference = None
        self._folds = utility_folds(self.y, self.n_folds, self.config.seed) if self._utility_runs() else []
        self._background: threading.Thread | None = None
        self._background_error: Exception | None = None
        self._closed = threading.Event()

    def _utility_runs(self) -> bool:
        return self.config.check_utility and len(self.classes) >= 2 and self.n_folds >= 2

    def start_real_only(self, threads: int) -> None:
        """Train the reference classifier and the utility check's without-arm on a background
        thread with ``threads`` torch threads (OpenMP counts are per thread: the caller keeps its
        own). The classifiers draw no global random numbers (``models.classifier``), so the model
        fitting meanwhile is unchanged by them."""
        if self._background is not None or len(self.classes) < 2:
            return

        def work() -> None:
            torch.set_num_threads(threads)
            try:
                if not self._closed.is_set():
                    self._reference_net()
                train_without(self.x[self.train_idx], self.y, self._folds, self.config.check_steps,
                              self._closed.is_set)
            except Exception as error:  # noqa: BLE001 - handed to the caller when it needs the results
                self._background_error = error

        self._background = threading.Thread(target=work, name="real-only classifiers", daemon=True)
        self._background.start()

    def close(self) -> None:
        """Stop the background classifiers after the one in progress (a cancelled or failed job)."""
        self._closed.set()

    def _await_background(self) -> None:
        if self._background is None:
            return
        while self._background.is_alive():
            self._stop()
            self._background.join(timeout=0.5)
        self._background = None
        if self._background_error is not None:
            raise self._background_error

    def _stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("cancelled while checking the synthetic scans")

    def class_metrics(self, label: str, draws) -> dict[str, Any]:
        synthetic = draws.scans
        real = self.x[[i for i in self.train_idx if self.labels[i] == label]]
        out: dict[str, Any] = {}
        ratio = gradient_energy(synthetic) / gradient_energy(real) if len(synthetic) and len(real) else None
        out["sharpness"] = {"gradient_energy_ratio": ratio, "band": list(SHARPNESS_BAND),
                            "warning": ratio is not None and not SHARPNESS_BAND[0] <= ratio <= SHARPNESS_BAND[1]}
        self.progress(f"fidelity check {label}", 0.95)
        self._stop()
        auc = two_sample_auroc(real, synthetic, self.config.seed, steps=self.config.check_steps)
        self._stop()
        self._await_background()
        share = None
        if len(self.classes) > 1 and len(synthetic):
            share = share_called(self._reference_net(), synthetic, self.classes.index(label))
        out["fidelity"] = {"two_sample_auroc": auc, "warning_at": TWO_SAMPLE_WARNING,
                           "warning": auc is not None and auc >= TWO_SAMPLE_WARNING,
                           "reference_share": share}
        if self.config.check_utility:
            out["utility"] = self._utility(label, draws)
        return out

    def _reference_net(self):
        """The classifier trained on the real train split, once for every class's scans."""
        if self._reference is None:
            self._reference = train_classifier(self.x[self.train_idx], self.y, self.config.seed,
                                               self.config.check_steps)
        return self._reference

    def _utility(self, label: str, draws) -> dict[str, Any] | None:
        if len(self.classes) < 2 or not len(draws.scans):
            return None
        position = {row: k for k, row in enumerate(self.train_idx)}
        sources = [[position[r] for r in rows if r in position] for rows in draws.sources]
        if self.n_folds < 2:
            return {"skipped": f"class '{label}' or another class has fewer than 2 train scans: no folds"}

        def on_fold(done: int, total: int) -> None:
            self._stop()
            self.progress(f"utility check {label} (fold {done} of {total})", 0.96)

        # the without-arm's folds are every class's (trained once, perhaps in the background)
        result = utility_check(self.x[self.train_idx], self.y, draws.scans, self.classes.index(label), sources,
                               steps=self.config.check_steps, on_fold=on_fold, folds=self._folds)
        return result.as_dict()


def utility_sentence(label: str, utility: dict[str, Any] | None) -> str | None:
    """The plain words of a utility self-check (summary, CLI, job events)."""
    if not utility:
        return None
    if "skipped" in utility:
        return f"class '{label}': utility check skipped: {utility['skipped']}"
    lo, hi = utility["auroc_interval"]
    blo, bhi = utility["balanced_accuracy_interval"]
    figures = (f"AUROC {utility['auroc_diff']:+.3f} (95% interval {lo:+.3f} to {hi:+.3f}), balanced accuracy "
               f"{utility['balanced_accuracy_diff']:+.3f} ({blo:+.3f} to {bhi:+.3f}) over {utility['folds']} folds "
               "of the train split")
    if utility["helped"]:
        return f"class '{label}': the synthetic scans helped a classifier on held-out real scans: {figures}"
    if utility["auroc_diff"] < 0:
        return (f"class '{label}': the synthetic scans did NOT help a classifier on this cohort; they made it "
                f"worse on held-out real scans: {figures}. Train on the real scans (with class-balanced "
                "batches) rather than on these")
    return (f"class '{label}': the synthetic scans did not measurably help a classifier on held-out real scans: "
            f"{figures}")

