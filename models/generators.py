"""How a class's new scans are made: generator strategies behind one interface.

Every strategy is ``draw(request) -> Draws``: given the trained model(s) and the real scans, it
returns the scans, what each one is derived from (for its sidecar and for the utility check's
folds), and its near-copy record. ``AugmentConfig.generator`` names one of ``STRATEGIES``:

- ``aggregate``: new latents from the class's aggregate posterior, decoded; with ``fine_detail``
  "nearest", plus the nearest training scan's residual (``models.augment.draw_synthetic``);
- ``counterfactual``: majority train subjects moved to the class (``models.counterfactual``);
- ``interpolation``: between two train subjects of the class in the refined latent space;
- ``variation``: a train subject of the class moved along the difference between two majority
  subjects in the refined latent space (``models.counterfactual.variations``).

Which model a strategy draws from (one per class, or one shared class-conditional model) is the
fitting step's business (``model_scope``, ``models/fitting.py``: its ``ClassModel`` gives the
request's model, shared model and seed); counterfactual, interpolation and variation need the
shared one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .counterfactual import Variations, counterfactuals, interpolations
from .fine_detail import FineDetail
from .options import AugmentConfig, FineDetailPolicy
from .report import near_copy_threshold, nearest_real, quantiles, rms

# Preprocessed scans live in [0, 1]; decoded means are clipped to it so both sit on one scale.
VALUE_RANGE = (0.0, 1.0)


@dataclass
class DrawRequest:
    model: Any  # what draws this class: a per-class model or a ClassView of the shared one (ClassModel.model)
    shared: Any  # models.shared_model.SharedModel or None (ClassModel.shared)
    label: str
    n: int
    x: Tensor  # every real scan, preprocessed (N, *data_shape)
    labels: list[str]  # label per row of x
    train_idx: list[int]  # rows generators may learn from
    paths: list[str]  # each row's path in the output (real/<class>/...), for sidecars
    seed: int
    config: AugmentConfig

    @property
    def class_rows(self) -> list[int]:
        return [i for i in self.train_idx if self.labels[i] == self.label]

    @property
    def other_classes(self) -> list[str]:
        """The other classes with train scans, the largest first (the majority first)."""
        return sorted({self.labels[i] for i in self.train_idx} - {self.label},
                      key=lambda lab: -sum(self.labels[i] == lab for i in self.train_idx))


@dataclass
class Draws:
    scans: Tensor
    per_scan: list[dict[str, Any]]  # sidecar entries of each scan
    sources: list[list[int]]  # the real rows each scan is derived from ([] when none)
    near: dict[str, Any]  # near-copy record (report/metrics.json, classes.<c>.near_copies)
    info: dict[str, Any] = field(default_factory=dict)  # strategy metrics (metrics.json, classes.<c>.generator)


def _near_record(config: AugmentConfig, threshold: float, left_out: int, fine_detail: str = "none") -> dict[str, Any]:
    return {"policy": config.near_copies, "threshold": threshold, "copy_fraction": config.near_copy_fraction,
            "replaced": 0, "left_out": left_out, "max_redraws": config.max_redraws, "fine_detail": fine_detail,
            "without_detail": []}


def _drop_near_copies(scans: Tensor, class_x: Tensor, config: AugmentConfig) -> tuple[Tensor, float]:
    """Which scans are near-copies of the class's training scans (no redraw can change a scan
    derived from a given subject, so with policy "replace" they are left out)."""
    threshold = near_copy_threshold(class_x, config.near_copy_fraction)
    if threshold <= 0 or config.near_copies != "replace" or not len(scans):
        return torch.zeros(len(scans), dtype=torch.bool), threshold
    return nearest_real(class_x, scans)[0] < threshold, threshold


def draw_synthetic(model, n: int, train_x: torch.Tensor, seed: int, near_copies: str = "replace",
                   copy_fraction: float = 0.5, max_redraws: int = 10, batch: int = 32,
                   on_batch: Callable[[int], None] | None = None,
                   fine_detail: FineDetailPolicy = "none",
                   detail_sigma: float = 0.0) -> tuple[torch.Tensor, dict[str, Any]]:
    """Draw ``n`` scans (clipped to the preprocessed range). With ``fine_detail="nearest"`` each
    decoder mean gets the fine detail of the nearest training scan first (models/fine_detail.py;
    ``detail_sigma`` > 0 keeps only the detail finer than a Gaussian of that many voxels).
    With ``near_copies="replace"`` a scan nearer a training scan than the near-copy threshold
    (``report.near_copy_threshold``) is redrawn, up to ``max_redraws`` rounds per batch. One still
    too near after that is delivered as its decoder mean alone if fine detail made it a near-copy
    and the mean is none (listed in ``without_detail``), else left out: never delivered. With a
    single training scan there is no threshold, and no fine detail either (nothing could tell a
    copy of it). Returns the scans and what happened (threshold, replaced, left_out, the
    fine_detail applied, without_detail)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    threshold = near_copy_threshold(train_x, copy_fraction)
    if threshold <= 0:  # one training scan: no audit can tell a copy of it, so no real detail either
        fine_detail = "none"
    detail = FineDetail(model, train_x, sigma=detail_sigma) if fine_detail == "nearest" else None

    def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k scans as delivered (with fine detail if asked), and their decoder means alone."""
        means = model.sample(k, generator=gen).cpu()
        clipped = means.clamp(*VALUE_RANGE)
        return (detail(means).clamp(*VALUE_RANGE) if detail is not None else clipped), clipped

    def too_near(scans: torch.Tensor) -> torch.Tensor:
        return nearest_real(train_x, scans)[0] < threshold

    kept, replaced, left_out, without_detail, done = [], 0, 0, [], 0
    for start in range(0, n, batch):
        chunk, means = draw(min(batch, n - start))
        if near_copies == "replace" and threshold > 0:
            for _ in range(max_redraws):
                near = too_near(chunk)
                if not near.any():
                    break
                chunk[near], means[near] = draw(int(near.sum()))
                replaced += int(near.sum())
            near = too_near(chunk)
            if detail is not None and near.any():
                # the detail made these copies (an undertrained model reconstructs every scan alike,
                # so its residuals hold whole subjects): their decoder means, where those are new
                plain = near & ~too_near(means)
                chunk[plain] = means[plain]
                near = near & ~plain
                without_detail += [done + i for i in torch.nonzero(plain[~near]).flatten().tolist()]
            left_out += int(near.sum())
            chunk = chunk[~near]
        kept.append(chunk)
        done += len(chunk)
        if on_batch is not None:
            on_batch(done)
    scans = torch.cat(kept) if kept else torch.empty(0, *model.cfg.data_shape)
    return scans, {"policy": near_copies, "threshold": threshold, "copy_fraction": copy_fraction,
                   "replaced": replaced, "left_out": left_out, "max_redraws": max_redraws,
                   "fine_detail": fine_detail, "without_detail": without_detail}


def draw_aggregate(req: DrawRequest) -> Draws:
    c = req.config
    class_x = req.x[req.class_rows]
    scans, near = draw_synthetic(req.model, req.n, class_x, req.seed, c.near_copies, c.near_copy_fraction,
                                 c.max_redraws, fine_detail=c.fine_detail)
    plain = set(near["without_detail"])
    per_scan = [{"generator": "aggregate", "fine_detail": "none" if i in plain else near["fine_detail"]}
                for i in range(len(scans))]
    return Draws(scans, per_scan, [[] for _ in range(len(scans))], near, {"kind": "aggregate"})


def draw_counterfactuals(req: DrawRequest) -> Draws:
    """One counterfactual per majority train subject (the largest other class first, shuffled by
    the seed), at most as many as there are such subjects."""
    c, shared = req.config, req.shared
    others = req.other_classes
    scans, per_scan, sources, distances, accepts = [], [], [], [], []
    remaining = req.n
    for k, other in enumerate(others):
        rows = [i for i in req.train_idx if req.labels[i] == other]
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(req.seed + k))
        rows = [rows[i] for i in order[:remaining].tolist()]
        if not rows:
            continue
        x = req.x[rows]
        cf, _, info = counterfactuals(shared.model, shared.sampler, x, shared.index(other), shared.index(req.label),
                                      c.abduction, c.abduction_draws, c.abduction_steps, req.seed + k,
                                      value_range=VALUE_RANGE)
        scans.append(cf)
        distances.append(rms(cf, x))
        accepts += [info.accept] * len(rows) if info.accept is not None else []
        for row in rows:
            per_scan.append({"generator": "counterfactual", "derived_from_real_subject": True,
                             "source": req.paths[row], "source_class": other, "abduction": c.abduction})
            sources.append([row])
        remaining -= len(rows)
        if remaining <= 0:
            break
    scans_t = torch.cat(scans) if scans else torch.empty(0, *req.x.shape[1:])
    class_x = req.x[req.class_rows]
    near, threshold = _drop_near_copies(scans_t, class_x, c)
    keep = ~near
    dist = torch.cat(distances) if distances else torch.empty(0)
    # the memorisation audit per scan: how far from the subject it came from, and from the class's
    # nearest train scan (a counterfactual should be near neither a copy of its source nor of them)
    to_class = nearest_real(class_x, scans_t)[0] if len(scans_t) and len(class_x) else torch.full((len(scans_t),),
                                                                                               float("nan"))
    for entry, d_source, d_class in zip(per_scan, dist.tolist(), to_class.tolist()):
        entry.update({"rms_to_source": round(d_source, 6), f"rms_to_nearest_{req.label}_train_scan": round(d_class, 6)})
    info = {"kind": "counterfactual", "abduction": c.abduction, "n_sources": len(scans_t),
            "abduction_accept": sum(accepts) / len(accepts) if accepts else None,
            "distance_to_source": quantiles(dist[keep] if len(dist) else dist),
            "short_of_sources": max(req.n - len(scans_t), 0)}
    return Draws(scans_t[keep], [p for p, k in zip(per_scan, keep.tolist()) if k],
                 [s for s, k in zip(sources, keep.tolist()) if k], _near_record(c, threshold, int(near.sum())), info)


def draw_interpolations(req: DrawRequest) -> Draws:
    """``n`` scans between random pairs of the class's train subjects, t uniform in [0.25, 0.75];
    a near-copy of a train scan (t near an end, or two near-alike subjects) is replaced by a new
    pair, up to ``max_redraws`` rounds, then left out."""
    c, shared = req.config, req.shared
    rows = req.class_rows
    if len(rows) < 2:
        raise ValueError(f"generator interpolation: class '{req.label}' needs at least two train scans, "
                         f"has {len(rows)}")
    g = torch.Generator().manual_seed(req.seed)
    class_x = req.x[rows]
    kept, per_scan, sources, replaced, accepts = [], [], [], 0, []
    threshold = near_copy_threshold(class_x, c.near_copy_fraction)
    for attempt in range(c.max_redraws + 1 if c.near_copies == "replace" else 1):
        want = req.n - sum(len(k) for k in kept)
        if want <= 0:
            break
        pairs = [tuple(torch.randperm(len(rows), generator=g)[:2].tolist()) for _ in range(want)]
        weights = (0.25 + 0.5 * torch.rand(want, generator=g)).tolist()
        scans, info = interpolations(shared.model, shared.sampler, class_x, shared.index(req.label), pairs, weights,
                                     c.abduction, c.abduction_draws, c.abduction_steps, req.seed + attempt,
                                     VALUE_RANGE)
        near, threshold = _drop_near_copies(scans, class_x, c)
        replaced += int(near.sum()) if attempt < c.max_redraws else 0
        if info.accept is not None:
            accepts.append(info.accept)
        kept.append(scans[~near])
        for (i, j), t, is_near in zip(pairs, weights, near.tolist()):
            if not is_near:
                per_scan.append({"generator": "interpolation", "derived_from_real_subject": True,
                                 "sources": [req.paths[rows[i]], req.paths[rows[j]]], "weight": round(t, 4),
                                 "abduction": c.abduction})
                sources.append([rows[i], rows[j]])
    scans = torch.cat(kept) if kept else torch.empty(0, *req.x.shape[1:])
    record = _near_record(c, threshold, req.n - len(scans))
    record["replaced"] = replaced
    return Draws(scans, per_scan, sources, record,
                 {"kind": "interpolation", "abduction": c.abduction,
                  "abduction_accept": sum(accepts) / len(accepts) if accepts else None})


# A variation is its source subject altered, so it lies nearer that subject than any two real
# subjects lie: the near-copy rule is applied against the class's *other* train scans (it must not
# become someone else), and it must move at least this fraction of the smallest real-to-real
# distance from its source (a model whose decoder ignores its latents would hand the source back).
VARIATION_MIN_CHANGE = 0.1


def _variation_near(scans: Tensor, class_x: Tensor, subjects: list[int], config: AugmentConfig,
                    threshold: float | None = None) -> Tensor:
    """Which variations fail the near-copy rule above (all pass with near_copies "keep");
    ``threshold``: the class's near-copy threshold, when the caller has it already."""
    if config.near_copies != "replace" or not len(scans):
        return torch.zeros(len(scans), dtype=torch.bool)
    flat = class_x.flatten(1).double()
    dist = torch.cdist(scans.flatten(1).double(), flat) / flat.shape[1] ** 0.5
    rows = torch.arange(len(scans))
    own = dist[rows, subjects]
    dist[rows, subjects] = float("inf")
    if threshold is None:
        threshold = near_copy_threshold(class_x, config.near_copy_fraction)
    smallest = threshold / config.near_copy_fraction if threshold > 0 else 0.0
    return (dist.min(1).values < threshold) | (own <= VARIATION_MIN_CHANGE * smallest)


def draw_variations(req: DrawRequest) -> Draws:
    """``n`` scans, each a train subject of the class (in turn, shuffled by the seed) moved by
    ``variation_scale`` along the difference between two random train subjects of the largest other
    class; one that fails the variation near-copy rule (``VARIATION_MIN_CHANGE``) is replaced by a
    new pair, up to ``max_redraws`` rounds, then left out."""
    c, shared = req.config, req.shared
    rows = req.class_rows
    others = req.other_classes
    other_rows = [i for i in req.train_idx if others and req.labels[i] == others[0]]
    if not rows or len(other_rows) < 2:
        raise ValueError(f"generator variation: needs a train scan of class '{req.label}' and two of another "
                         f"class, has {len(rows)} and {len(other_rows)}")
    g = torch.Generator().manual_seed(req.seed)
    class_x, other_x = req.x[rows], req.x[other_rows]
    order = torch.randperm(len(rows), generator=g).tolist()
    kept, per_scan, sources, replaced, done = [], [], [], 0, 0
    threshold = near_copy_threshold(class_x, c.near_copy_fraction)
    # every subject is abducted once, whatever the redraws (models.counterfactual.Variations)
    moving = Variations(shared.model, shared.sampler, class_x, shared.index(req.label), other_x,
                        shared.index(others[0]), c.abduction, c.abduction_draws, c.abduction_steps, req.seed)
    for attempt in range(c.max_redraws + 1 if c.near_copies == "replace" else 1):
        want = req.n - done
        if want <= 0:
            break
        subjects = [order[(done + k) % len(order)] for k in range(want)]
        pairs = [torch.randperm(len(other_rows), generator=g)[:2].tolist() for _ in range(want)]
        scans = moving([(a, i, j) for a, (i, j) in zip(subjects, pairs)], c.variation_scale, VALUE_RANGE)
        near = _variation_near(scans, class_x, subjects, c, threshold)  # computed once, above
        replaced += int(near.sum()) if attempt < c.max_redraws else 0
        kept.append(scans[~near])
        for a, (i, j), is_near in zip(subjects, pairs, near.tolist()):
            if not is_near:
                per_scan.append({"generator": "variation", "derived_from_real_subject": True,
                                 "source": req.paths[rows[a]],
                                 "variation_from": [req.paths[other_rows[i]], req.paths[other_rows[j]]],
                                 "scale": c.variation_scale, "abduction": c.abduction})
                sources.append([rows[a]])
                done += 1
    scans_t = torch.cat(kept) if kept else torch.empty(0, *req.x.shape[1:])
    record = _near_record(c, threshold, req.n - len(scans_t))
    record.update(replaced=replaced, rule=f"against the class's other train scans; at least {VARIATION_MIN_CHANGE} x "
                                        "the smallest real-to-real distance from its own source")
    dist = rms(scans_t, req.x[[s[0] for s in sources]]) if sources else torch.empty(0)
    for entry, d_source in zip(per_scan, dist.tolist()):
        entry["rms_to_source"] = round(d_source, 6)
    return Draws(scans_t, per_scan, sources, record,
                 {"kind": "variation", "abduction": c.abduction, "scale": c.variation_scale,
                  "abduction_accept": moving.info.accept,
                  "distance_to_source": quantiles(dist)})


STRATEGIES: dict[str, Callable[[DrawRequest], Draws]] = {
    "aggregate": draw_aggregate,
    "counterfactual": draw_counterfactuals,
    "interpolation": draw_interpolations,
    "variation": draw_variations,
}


def draw(req: DrawRequest) -> Draws:
    return STRATEGIES[req.config.generator](req)
