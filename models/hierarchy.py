"""``hconv``: a hierarchical VAE for volumes whose top-down path holds spatial latent maps at
coarse resolutions (NVAE / VDVAE style), built from MONAI convolutions (``spatial_dims`` 2 or 3).

Layers, top first: a vector latent z_top (``latent_dims[0]`` units; its prior N(0, I), or a
learned N(m_y, s_y^2) per class), then one latent map per entry of ``latent_channels``, the top
map at the encoder's bottleneck resolution and each one below at twice the resolution.

Generative (top-down) path: h = stem([z_top, y]) at the bottleneck; at each map level
p(z_k | h) = N(mu_k(h), sigma_k(h)^2) per voxel and channel, then h <- cell(h + merge(z_k)), and
a transposed convolution doubles the resolution for the next level; the remaining levels
upsample to the data grid, where a 1x1 convolution gives the likelihood's parameters.
Inference: the encoder's stage outputs are bottom-up features per resolution;
q(z_top | x) = N from the flattened bottleneck features (and y), and each map's posterior is a
residual q(z_k | h, x) = N(mu_k + dmu_k, sigma_k^2 ds_k^2), (dmu_k, log ds_k) from [h, f_k].

Chain space is the base class's: the layers flattened and concatenated, bottom (finest map)
first, top vector last; ``noncentered`` chains hold eps with z_k = mu_k + sigma_k eps_k, so the
prior there is N(0, I) and the chain moves every layer jointly. New scans: z_top from the
sampling distribution (aggregate posterior: full covariance), the maps from their top-down prior
at ``map_temperature`` (default) or from a diagonal aggregate-posterior Gaussian; or every layer
at once from the joint aggregate-posterior Gaussian (``map_sampling`` "joint": diagonal within-scan
variance plus the low-rank spread of the scans' posterior means).

Measured (docs/RESULTS.md): not sharper than ``conv`` on the demo cohort; on the harder cohort a
shared class-conditional hconv lost the minority's shift. Phase 2 of the noncentered form diverged
until the decoder's objective became the centered density of the chains' latents
(``models.training.Trainer._decoder_log_joint``). Drawing the maps at a lower temperature or from
the joint aggregate posterior did not make it a better generator than the per-class conv model
(docs/RESULTS.md, "Tried and not adopted": blobs at t >= 0.5, brains without the class shift
from "joint").
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import Convolution
from torch import nn

from .config import ModelConfig
from .likelihoods import build_likelihood
from .networks import ACTIVATION, CropToData, PadToGrid, _conv, mlp
from .vae import LOG_STD_RANGE, VAE, _normal_log_prob, _randn, _standard_normal_log_prob, soft_bound


def _conv_only(cfg: ModelConfig, c_in: int, c_out: int, kernel_size: int = 3) -> Convolution:
    return Convolution(spatial_dims=cfg.spatial_dims, in_channels=c_in, out_channels=c_out,
                       kernel_size=kernel_size, conv_only=True)


class SpatialHVAE(VAE):
    def __init__(self, cfg: ModelConfig):
        nn.Module.__init__(self)  # the networks differ from VAE's; the methods are shared
        if cfg.arch != "hconv":
            raise ValueError(f"arch: SpatialHVAE needs 'hconv', got {cfg.arch!r}")
        self.cfg = cfg
        self.latent_dims = cfg.layer_sizes  # maps (finest first), then the top vector
        self.latent_dim = sum(self.latent_dims)
        n_classes, n_maps = cfg.n_classes, len(cfg.latent_channels)
        self.bottleneck = cfg.bottleneck_shape  # of the padded grid (networks.PadToGrid)
        widths = list(reversed(cfg.channels))  # channels of h per level, bottleneck first
        # map k (0 = top map) at level k: channels and spatial shape of its latent
        self.map_shapes = [(c, *(b * 2**k for b in self.bottleneck))
                           for k, c in enumerate(reversed(cfg.latent_channels))]
        top_dim = cfg.latent_dims[0]

        # --- inference network (phi) ---
        stages, c_in = [], cfg.data_shape[0]
        for c_out in cfg.channels:
            stages.append(_conv(cfg, c_in, c_out, strides=2))
            c_in = c_out
        self.encoder_stages = nn.ModuleList(stages)
        self.pad, self.crop = PadToGrid(cfg), CropToData(cfg)
        feature_dim = cfg.channels[-1] * math.prod(self.bottleneck)
        self.posterior_top = mlp(feature_dim + n_classes, (cfg.hidden[-1],), 2 * top_dim)
        self.map_posteriors = nn.ModuleList(
            _conv_only(cfg, 2 * widths[k], 2 * shape[0]) for k, shape in enumerate(self.map_shapes))

        # --- generative model (theta) ---
        self.stem = nn.Sequential(nn.Linear(top_dim + n_classes, widths[0] * math.prod(self.bottleneck)),
                                  ACTIVATION(), nn.Unflatten(1, (widths[0], *self.bottleneck)))
        self.map_priors = nn.ModuleList(
            _conv_only(cfg, widths[k], 2 * shape[0]) for k, shape in enumerate(self.map_shapes))
        self.map_merges = nn.ModuleList(
            _conv_only(cfg, shape[0], widths[k]) for k, shape in enumerate(self.map_shapes))
        self.cells = nn.ModuleList(
            nn.Sequential(_conv(cfg, widths[k], widths[k]), _conv_only(cfg, widths[k], widths[k]))
            for k in range(n_maps))
        self.up = nn.ModuleList(
            _conv(cfg, w, (widths + [cfg.channels[0]])[r + 1], strides=2, is_transposed=True)
            for r, w in enumerate(widths))
        self.head = _conv_only(cfg, cfg.channels[0], cfg.data_shape[0], kernel_size=1)
        self._init_class_prior(top_dim)
        self.likelihood = build_likelihood(cfg)
        self.output_offset = nn.Parameter(torch.zeros(cfg.data_shape))
        self._init_sampling_buffers(full_block=top_dim)
        if cfg.map_sampling == "joint":
            lead = (n_classes,) if n_classes else ()
            self.register_buffer("sampling_factor", torch.zeros(*lead, cfg.sampling_rank, self.latent_dim))
            self.register_buffer("sampling_within_scale", torch.ones(*lead, self.latent_dim))

    # ------------------------------------------------------------------ pieces
    @staticmethod
    def _gaussian_map(net: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A conv's output split into (loc, log_std), each flattened to (B, c * voxels)."""
        params = net(inputs)
        if params.dtype in (torch.float16, torch.bfloat16):
            params = params.float()
        loc, log_std = params.chunk(2, dim=1)
        return loc.flatten(1), soft_bound(log_std.flatten(1), *LOG_STD_RANGE)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder stage outputs, coarsest (bottleneck) first."""
        out, h = [], self.pad(x)
        for stage in self.encoder_stages:
            h = stage(h)
            out.append(h)
        return out[::-1]

    def _inference(self, x: torch.Tensor, y, rows: int):
        onehot = self._onehot(y, x.shape[0])
        levels = self._features(x)
        top_in = self._with_label(levels[0].flatten(1), onehot)
        tiled = lambda t: None if t is None else self._repeat_rows(t, rows)
        features = {"levels": [tiled(f) for f in levels[:len(self.map_shapes)]], "top": tiled(top_in),
                    "onehot": tiled(onehot)}
        return features, self._top_prior(features["onehot"])

    # ------------------------------------------------------------ the top-down walk
    def _descend(self, pick, onehot, top, features=None):
        """One top-down pass. At each layer ``pick(layer, loc, log_std)`` gives the chain value,
        where (loc, log_std) is q's Gaussian in chain space when ``features`` are given and the
        prior's otherwise. Returns per-layer chain values, q locs, q log-stds (None without
        features), latents z, the prior log density in chain space, and the final state h."""
        n_layers, n_maps = len(self.latent_dims), len(self.map_shapes)
        values, locs, log_stds, zs = ([None] * n_layers for _ in range(4))
        log_prior = 0.0

        def visit(layer, q, prior_chain):
            value = pick(layer, *(q if q is not None else prior_chain))
            values[layer] = value
            if q is not None:
                locs[layer], log_stds[layer] = q
            return value

        def prior_term(value, prior_chain):
            loc, log_std = prior_chain
            return _standard_normal_log_prob(value) if loc is None else _normal_log_prob(value, loc, log_std)

        # top vector
        top_layer = n_layers - 1
        prior_chain = (None, None) if top is None or self.noncentered else top
        q = self._posterior_top(features["top"], top) if features is not None else None
        value = visit(top_layer, q, self._pick_prior(prior_chain))
        log_prior = log_prior + prior_term(value, prior_chain)
        z_top = top[0] + torch.exp(top[1]) * value if top is not None and self.noncentered else value
        zs[top_layer] = z_top
        h = self.stem(self._with_label(z_top, onehot))
        # maps, top first
        for k, shape in enumerate(self.map_shapes):
            layer = n_layers - 2 - k
            mu, log_sigma = self._gaussian_map(self.map_priors[k], h)
            prior_chain = (None, None) if self.noncentered else (mu, log_sigma)
            q = None
            if features is not None:
                delta_mu, log_delta_s = self._gaussian_map(
                    self.map_posteriors[k], torch.cat([h, features["levels"][k]], dim=1))
                q = ((delta_mu * torch.exp(-log_sigma), log_delta_s) if self.noncentered
                     else (mu + delta_mu, log_sigma + log_delta_s))
            value = visit(layer, q, self._pick_prior(prior_chain))
            log_prior = log_prior + prior_term(value, prior_chain)
            z = mu + torch.exp(log_sigma) * value if self.noncentered else value
            zs[layer] = z
            h = h + self.map_merges[k](z.view(-1, *shape))
            h = h + self.cells[k](h)
            if k < n_maps - 1:
                h = self.up[k](h)
        return values, locs, log_stds, zs, log_prior, h

    @staticmethod
    def _pick_prior(prior_chain):
        """The prior's (loc, log_std) in chain space for ``pick``; zeros stand for N(0, I)."""
        loc, log_std = prior_chain
        if loc is None:
            return 0.0, 0.0
        return loc, log_std

    def _finish(self, h: torch.Tensor) -> torch.Tensor:
        """Upsample the last map level's state to the data grid and apply the 1x1 head."""
        for up in self.up[max(len(self.map_shapes) - 1, 0):]:
            h = up(h)
        return self.crop(self.head(h))

    # --------------------------------------------------- VAE's internals, overridden
    def _top_down(self, features, pick, top=None):
        values, locs, log_stds, *_ = self._descend(pick, features["onehot"], top, features)
        return values, locs, log_stds

    def _given(self, u: torch.Tensor, y):
        rows = u.shape[0]
        onehot = self._onehot(self._row_labels(y, rows), rows)
        given = self.split_layers(u)
        return self._descend(lambda layer, loc, log_std: given[layer], onehot, self._top_prior(onehot))

    def chain_to_latent(self, u: torch.Tensor, y=None) -> torch.Tensor:
        self._check_u(u)
        return torch.cat([z.flatten(1) for z in self._given(u, y)[3]], dim=-1)

    def latent_to_chain(self, z: torch.Tensor, y=None) -> torch.Tensor:
        raise NotImplementedError("hconv: latents -> chain coordinates is not needed and not provided")

    def exogenous(self, u: torch.Tensor, y=None) -> torch.Tensor:
        """VAE.exogenous: each layer standardised by its prior given the layers above (the top
        vector by its class prior), walking down the given chain point."""
        self._check_u(u)
        if self.noncentered:
            self._onehot(self._row_labels(y, u.shape[0]), u.shape[0])  # validates y
            return u
        rows = u.shape[0]
        onehot = self._onehot(self._row_labels(y, rows), rows)
        given, eps = self.split_layers(u), [None] * len(self.latent_dims)

        def standardise(layer, loc, log_std):
            eps[layer] = (given[layer] - loc) * torch.exp(-torch.as_tensor(log_std))
            return given[layer]

        self._descend(standardise, onehot, self._top_prior(onehot))
        return torch.cat(eps, dim=-1)

    def from_exogenous(self, eps: torch.Tensor, y=None) -> torch.Tensor:
        self._check_u(eps)
        if self.noncentered:
            self._onehot(self._row_labels(y, eps.shape[0]), eps.shape[0])
            return eps
        rows = eps.shape[0]
        onehot = self._onehot(self._row_labels(y, rows), rows)
        noise = self.split_layers(eps)

        def place(layer, loc, log_std):
            return loc + torch.exp(torch.as_tensor(log_std)) * noise[layer]

        return torch.cat(self._descend(place, onehot, self._top_prior(onehot))[0], dim=-1)

    def log_prior(self, u: torch.Tensor, y=None) -> torch.Tensor:
        self._check_u(u)
        if self.noncentered:
            self._onehot(self._row_labels(y, u.shape[0]), u.shape[0])  # validates y
            return _standard_normal_log_prob(u)
        return self._given(u, y)[4]

    def _decoder_out(self, u: torch.Tensor, y=None) -> torch.Tensor:
        rows = u.shape[0]
        return self._finish(self._given(u, y)[5]) + self._offset(self._onehot(self._row_labels(y, rows), rows))

    def sample_prior(self, n: int, generator: torch.Generator | None = None, y=None) -> torch.Tensor:
        eps = _randn((n, self.latent_dim), generator, self._a_parameter())
        onehot = self._onehot(self._row_labels(y, n), n)
        if self.noncentered:
            return eps
        noise = self.split_layers(eps)

        def draw(layer, loc, log_std):
            return loc + torch.exp(torch.as_tensor(log_std)) * noise[layer]

        values = self._descend(draw, onehot, self._top_prior(onehot))[0]
        return torch.cat(values, dim=-1)

    def sample_latent(self, n: int, generator: torch.Generator | None = None, y=None) -> torch.Tensor:
        """The top vector from the sampling distribution that cfg.sampling names; the maps from
        the one cfg.map_sampling names (see ModelConfig)."""
        if self._joint_sampling:
            slot = self._class_slot(y)
            if bool(self.sampling_is_fitted[slot]):
                like = self._a_parameter()
                between = _randn((n, self.cfg.sampling_rank), generator, like) @ self.sampling_factor[slot]
                within = self.sampling_within_scale[slot] * _randn((n, self.latent_dim), generator, like)
                return self.sampling_loc[slot] + between + within
            return self.sample_prior(n, generator, y)
        u = super().sample_latent(n, generator, y)
        if self.cfg.map_sampling == "aggregate" and self.cfg.sampling == "aggregate":
            return u
        top = self.split_layers(u)[-1]
        noise = self.split_layers(_randn((n, self.latent_dim), generator, self._a_parameter()))
        t = self.cfg.map_temperature
        onehot = self._onehot(self._row_labels(y, n), n)

        def draw(layer, loc, log_std):
            if layer == len(self.latent_dims) - 1:
                return top
            return loc + t * torch.exp(torch.as_tensor(log_std)) * noise[layer]

        return torch.cat(self._descend(draw, onehot, self._top_prior(onehot))[0], dim=-1)

    # ------------------------------------------------ joint aggregate-posterior sampling
    @property
    def _joint_sampling(self) -> bool:
        return self.cfg.map_sampling == "joint" and self.cfg.sampling == "aggregate"

    @torch.no_grad()
    def fit_sampling_distribution(self, batches, draws: int = 16, generator: torch.Generator | None = None) -> bool:
        """map_sampling "joint": per class, the Gaussian over every layer with the aggregate
        posterior's mean and covariance Cov = E[Var(u | x)] + Cov(E[u | x]) (law of total
        covariance). The first term is taken as diagonal (q's own variances, each layer's given
        the posterior mean of the layers above, as ``encode`` gives them); the second is the
        exact spread of the scans' posterior means, of rank below the number of scans, stored as
        its leading ``sampling_rank`` principal directions. A diagonal fit of the maps (the
        "aggregate" choice) loses the spatial correlation that this spread carries."""
        if not self._joint_sampling:
            return super().fit_sampling_distribution(batches, draws, generator)
        n_slots = max(self.cfg.n_classes, 1)
        means, variances = [[] for _ in range(n_slots)], [[] for _ in range(n_slots)]
        for slot, xs, label in self._class_groups(batches):
            if len(xs):
                mu, logvar = self.encode(xs, label)
                means[slot].append(mu.double())
                variances[slot].append(logvar.double().exp())

        def store(index, slot) -> bool:
            mu, var = torch.cat(means[slot]), torch.cat(variances[slot])
            loc = mu.mean(0)
            _, spread, directions = torch.linalg.svd((mu - loc) / math.sqrt(len(mu)), full_matrices=False)
            rank = min(self.cfg.sampling_rank, len(spread))
            factor = torch.zeros_like(self.sampling_factor[index], dtype=torch.float64)
            factor[:rank] = spread[:rank, None] * directions[:rank]
            within = var.mean(0).sqrt()
            if not (torch.isfinite(factor).all() and torch.isfinite(within).all() and torch.isfinite(loc).all()):
                return False
            self.sampling_loc[index] = loc.float()
            self.sampling_factor[index] = factor.float()
            self.sampling_within_scale[index] = within.float()
            return True

        return self._mark_fitted([sum(len(m) for m in slot_means) for slot_means in means], store)

    def encoder_parameters(self) -> list[nn.Parameter]:
        modules = (self.encoder_stages, self.posterior_top, self.map_posteriors)
        return [p for m in modules for p in m.parameters()]

    def generative_parameters(self) -> list[nn.Parameter]:
        modules = (self.stem, self.map_priors, self.map_merges, self.cells, self.up, self.head, self.likelihood)
        return [*self._own_generative_parameters(), *(p for m in modules for p in m.parameters())]
