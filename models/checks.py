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
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError
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

# The key under which a saved model's meta keeps each class's training-scan gradient energy: one
# number per class, no scan, so that a sample job, which has no real scans, can still say how
# sharp its draws are against what the model learned from.
TRAIN_GRADIENT_ENERGY = "train_gradient_energy"
ALL_CLASSES = "all"  # its key for a model trained on every class without labels (a train job with no label)


def training_sharpness(scans: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """``{TRAIN_GRADIENT_ENERGY: {label: gradient energy of that class's training scans}}``, to
    merge into a saved model's meta."""
    return {TRAIN_GRADIENT_ENERGY: {label: gradient_energy(x) for label, x in scans.items() if len(x)}}


def sharpness(synthetic: Tensor, real_energy: float | None) -> dict[str, Any] | None:
    """The sharpness check of synthetic scans against real ones of the class whose gradient
    energy is ``real_energy``: their ratio, the band, and whether it lies outside (None when there
    is nothing to compare)."""
    if not len(synthetic) or not real_energy:
        return None
    ratio = gradient_energy(synthetic) / real_energy
    return {"gradient_energy_ratio": ratio, "band": list(SHARPNESS_BAND),
            "warning": not SHARPNESS_BAND[0] <= ratio <= SHARPNESS_BAND[1]}


# What a sample (decoder means of new latents) can do about a blur tell: augment, which has the
# real scans, delivers its variations at their sharpness (docs/RESULTS.md, variations).
SAMPLE_ADVICE = ("; augment (generator variation, its default) delivers scans as sharp as the real ones, each a real "
                 "subject altered")


def sample_warning(label: str, record: dict[str, Any]) -> str:
    """The warning of a sample whose sharpness (``sampled_sharpness``) lies outside the band: the
    words of ``mcvae sample`` and of a sample job's events."""
    return sharpness_warning(label, record, "sampled scans", "training scans") + SAMPLE_ADVICE


def sampled_sharpness(meta: dict[str, Any], label: str | None, scans: Tensor) -> dict[str, Any] | None:
    """The sharpness check of scans drawn from a saved model (``meta``: its saved meta) for class
    ``label`` (None: a model of every class, ``ALL_CLASSES``), against the training scans the
    model recorded; None for a model saved before it recorded them."""
    energies = meta.get(TRAIN_GRADIENT_ENERGY) or {}
    return sharpness(scans, energies.get(label or ALL_CLASSES))


def sharpness_warning(label: str, record: dict[str, Any], scans: str = "synthetic scans",
                      real: str = "real scans") -> str:
    """The words of a sharpness warning (``record``: a ``sharpness`` result with its warning set)."""
    low, high = record["band"]
    ratio = record["gradient_energy_ratio"]
    what = "smoother" if ratio < low else "grainier"
    return (f"class '{label}': the {scans}' gradient energy is {ratio:.2f} x the {real}' (outside {low}-{high}): "
            f"they are {what}, and a classifier can learn their sharpness instead of the class")


# At most this many classifiers train side by side (a check has at most a handful of folds; each
# holds its own activations).
MAX_SIDE_BY_SIDE = 8


class ClassifierPool:
    """Trains the checks' classifiers on threads of one torch thread each (OpenMP counts are per
    thread), at most ``slots`` at once. Side by side beats one after the other on more threads:
    on the 2-core VM two 100-step classifiers of 44 scans at 32^3 took 10.7 s together on 1 thread
    each, against 7.1 s each on 2 threads and 13.2 s on 1 (docs/results-history,
    2026-12-04-issue22-scales-and-checks.md). ``widen()`` lifts the bound once the model's
    training no longer needs its CPUs; ``close()`` cancels what has not started."""

    def __init__(self, workers: int, slots: int):
        workers = max(1, min(workers, MAX_SIDE_BY_SIDE))
        slots = max(1, min(slots, workers))
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="classifier",
                                            initializer=torch.set_num_threads, initargs=(1,))
        self._slots, self._held_back = threading.Semaphore(slots), workers - slots
        self.closed = threading.Event()

    def widen(self) -> None:
        """Every worker may run from now on."""
        for _ in range(self._held_back):
            self._slots.release()
        self._held_back = 0

    def submit(self, fn: Callable, *args) -> Future:
        def run():
            with self._slots:
                if self.closed.is_set():
                    raise TrainingCancelled("the checks were stopped")
                return fn(*args)

        return self._executor.submit(run)

    def close(self) -> None:
        self.closed.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


class ClassifierChecks:
    """``class_metrics(label, draws)`` for each class, sharing one reference classifier and one
    without-synthetic arm of the utility check, every classifier trained in a ``ClassifierPool``.
    Those two see only real scans, so ``start_real_only(spare)`` trains them on the ``spare`` CPUs
    while the generative model fits (a VAE training of small minibatches leaves CPUs idle:
    ``models.threads``); ``close()`` stops what has not started (a cancelled or failed job)."""

    def __init__(self, x: Tensor, labels: list[str], train_idx: list[int], config: AugmentConfig,
                 progress: Callable[[str, float], None], should_stop: Callable[[], bool] | None = None):
        self.x, self.labels, self.train_idx, self.config = x, labels, train_idx, config
        self.progress, self.should_stop = progress, should_stop
        self.classes = sorted({labels[i] for i in train_idx})
        self.y = torch.tensor([self.classes.index(labels[i]) for i in train_idx], dtype=torch.long)
        smallest = min((int((self.y == k).sum()) for k in range(len(self.classes))), default=0)
        self.n_folds = min(self.config.utility_folds, smallest)
        self._folds = utility_folds(self.y, self.n_folds, self.config.seed) if self._utility_runs() else []
        self._threads = torch.get_num_threads()  # the caller's: each pool worker has 1 of them
        self._pool: ClassifierPool | None = None
        self._reference: Future | None = None
        self._without: list[Future] = []

    def _utility_runs(self) -> bool:
        return self.config.check_utility and len(self.classes) >= 2 and self.n_folds >= 2

    def start_real_only(self, spare: int) -> None:
        """Start the reference classifier and the utility check's without-arm on ``spare`` CPUs.
        The classifiers draw no global random numbers (``models.classifier``), so the model's
        fitting meanwhile is unchanged by them."""
        if self._pool is None:
            self._pool = ClassifierPool(self._threads, spare)
        self._start_real_only()

    def _start_real_only(self) -> None:
        if self._reference is not None or len(self.classes) < 2:
            return
        x, steps = self.x[self.train_idx], self.config.check_steps
        self._reference = self._pool.submit(train_classifier, x, self.y, self.config.seed, steps)
        # one job per fold: a job never waits for another (the pool's slots could all be waiting)
        self._without = [self._pool.submit(train_without, x, self.y, [fold], steps) for fold in self._folds]

    def _ready_pool(self) -> ClassifierPool:
        """The pool, with every CPU of the caller (the model's training is over)."""
        if self._pool is None:
            self._pool = ClassifierPool(self._threads, self._threads)
        self._pool.widen()
        self._start_real_only()
        return self._pool

    def _result(self, future: Future):
        """A pool's result, checking the job's stop request while it waits."""
        while True:
            self._stop()
            try:
                return future.result(timeout=0.5)
            except TimeoutError:
                continue

    def _map(self, fn: Callable, items) -> Iterator:
        """``fn`` over ``items`` in the pool, side by side; results in order, awaited here on the
        caller's thread (so its stop request is checked while it waits)."""
        futures = [self._pool.submit(fn, item) for item in items]
        return (self._result(f) for f in futures)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def _stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("cancelled while checking the synthetic scans")

    def class_metrics(self, label: str, draws) -> dict[str, Any]:
        self._ready_pool()
        synthetic = draws.scans
        real = self.x[[i for i in self.train_idx if self.labels[i] == label]]
        out: dict[str, Any] = {}
        out["sharpness"] = sharpness(synthetic, gradient_energy(real) if len(real) else None) or {
            "gradient_energy_ratio": None, "band": list(SHARPNESS_BAND), "warning": False}
        self.progress(f"fidelity check {label}", 0.95)
        self._stop()
        auc = two_sample_auroc(real, synthetic, self.config.seed, steps=self.config.check_steps, map_fn=self._map)
        share = None
        if len(self.classes) > 1 and len(synthetic):
            share = share_called(self._result(self._reference), synthetic, self.classes.index(label))
        out["fidelity"] = {"two_sample_auroc": auc, "warning_at": TWO_SAMPLE_WARNING,
                           "warning": auc is not None and auc >= TWO_SAMPLE_WARNING,
                           "reference_share": share}
        if self.config.check_utility:
            out["utility"] = self._utility(label, draws)
        return out

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

        # the without-arm's folds are every class's (trained once, perhaps beside the model's fitting)
        for future in self._without:
            self._result(future)
        result = utility_check(self.x[self.train_idx], self.y, draws.scans, self.classes.index(label), sources,
                               steps=self.config.check_steps, on_fold=on_fold, folds=self._folds, map_fn=self._map)
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

