"""The VAE: one class for a plain VAE (one latent layer) and for hierarchies of L layers.

Latent layer 1 (index 0) is the bottom, decoded to x; layer L (index L-1) is the top.

Generative model: p(z_L) = N(0, I); p(z_l | z_{l+1}) = N(mu_l, sigma_l^2) from a small network
of z_{l+1}; p(x | z_1) from the decoder and the likelihood.

Encoder: bottom-up features f = encoder(x), d_1 = head_1(f), d_l = head_l(d_{l-1}); then a
top-down residual posterior q(z_L | x) = N(dmu_L, ds_L^2) from d_L and
q(z_l | z_{l+1}, x) = N(mu_l + dmu_l, sigma_l^2 ds_l^2) with (dmu_l, log ds_l) from [d_l, z_{l+1}].

Chain space is where MCMC moves: a (B, latent_dim) tensor, layers concatenated bottom first.
``centered``: the chain holds z. ``noncentered``: it holds eps, z_L = eps_L and
z_l = mu_l(z_{l+1}) + sigma_l(z_{l+1}) eps_l, so the prior in chain space is N(0, I).
Every density here (prior, q, joint) is a density in chain space.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from itertools import chain as chained

import torch
from torch import nn

from .config import ModelConfig
from .likelihoods import build_likelihood
from .networks import build_decoder, build_encoder, initialize_linear, mlp

# Latent log standard deviations are bounded: a collapsed or exploding scale would make the
# chain-space map (noncentered) or the prior density (centered) numerically useless. The bound
# is soft (scaled tanh, slope 1 at 0): a hard clamp has zero gradient outside its range, and an
# encoder whose first outputs land there never comes back.
LOG_STD_RANGE = (-7.0, 2.0)


def soft_bound(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Identity near 0, smoothly saturating at ``low`` < 0 < ``high``."""
    return torch.where(value > 0, high * torch.tanh(value / high), -low * torch.tanh(value / -low))
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_prob(value: torch.Tensor, loc: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(value; loc, exp(log_std)^2), summed over the last dimension."""
    standardized = (value - loc) * torch.exp(-log_std)
    return (-0.5 * standardized**2 - log_std - _HALF_LOG_2PI).sum(-1)


def _standard_normal_log_prob(value: torch.Tensor) -> torch.Tensor:
    return (-0.5 * value**2 - _HALF_LOG_2PI).sum(-1)


def _randn(
    shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    # Drawn on the generator's own device, so a CPU generator also seeds a CUDA model.
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return noise.to(like.device)


class VAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.latent_dims = list(cfg.latent_dims)
        self.latent_dim = sum(self.latent_dims)
        n_layers = len(self.latent_dims)
        width = cfg.hidden[-1]
        # With the linear arch every small network is one affine map, so that (with one layer)
        # the model is exactly linear-Gaussian and closed forms apply.
        affine = cfg.arch == "linear"

        def small_net(in_dim: int, out_dim: int) -> nn.Module:
            return nn.Linear(in_dim, out_dim) if affine else mlp(in_dim, (width,), out_dim,
                                                                  activation=cfg.activation)

        n_classes = cfg.n_classes
        # --- inference network (phi) ---
        self.encoder, feature_dim = build_encoder(cfg)
        # A class-conditional encoder sees the label as a one-hot beside the image features.
        heads, head_dims, in_dim = [], [], feature_dim + n_classes
        for layer in range(n_layers):
            if (affine or cfg.arch == "mlp") and layer == 0:
                # linear: d_1 = x, the most general affine encoder. mlp: d_1 = the encoder's last
                # hidden layer, so that ``hidden`` lists every hidden layer there is.
                head, out_dim = nn.Identity(), in_dim
            elif affine:
                head, out_dim = nn.Linear(in_dim, width), width
            else:
                head, out_dim = mlp(in_dim, (), width, final_activation=True,
                                    activation=cfg.activation), width
            heads.append(head)
            head_dims.append(out_dim)
            in_dim = out_dim
        self.bottom_up = nn.ModuleList(heads)
        # mlp, one latent layer: q's parameters are an affine map of the last hidden layer (the
        # standard VAE encoder); otherwise the top posterior has a hidden layer of its own.
        plain_mlp = cfg.arch == "mlp" and n_layers == 1
        self.posterior_top = (nn.Linear(head_dims[-1], 2 * self.latent_dims[-1]) if plain_mlp
                              else small_net(head_dims[-1], 2 * self.latent_dims[-1]))
        self.posterior_residuals = nn.ModuleList(
            small_net(head_dims[l] + self.latent_dims[l + 1], 2 * self.latent_dims[l])
            for l in range(n_layers - 1)
        )
        # --- generative model (theta) ---
        self.priors = nn.ModuleList(
            small_net(self.latent_dims[l + 1], 2 * self.latent_dims[l]) for l in range(n_layers - 1)
        )
        self.decoder = build_decoder(cfg, self.latent_dims[0] + n_classes)
        self._init_class_prior(self.latent_dims[-1])
        self.likelihood = build_likelihood(cfg)
        # The decoder predicts a residual around a per-voxel offset that starts at the training
        # data's mean image (initialize_from_data). Without it, an untrained decoder can only
        # brighten its output through large latents, and training drives the encoder's scales
        # to their bound before the decoder's biases catch up: prior draws then decode to noise.
        self.output_offset = nn.Parameter(torch.zeros(cfg.data_shape))
        self._init_sampling_buffers(full_block=self.latent_dim)
        initialize_linear(self, cfg.init)

    def _init_class_prior(self, top_dim: int) -> None:
        """p(z_L | y) = N(m_y, s_y^2): a learned mean and log-scale per class (zeros: N(0, I));
        and the per-class output offset (cfg.class_offset), zero until initialize_from_data."""
        if self.cfg.n_classes:
            self.class_prior = nn.Parameter(torch.zeros(self.cfg.n_classes, 2 * top_dim))
            if self.cfg.class_offset:
                self.class_offset = nn.Parameter(torch.zeros(self.cfg.n_classes, *self.cfg.data_shape))

    @property
    def _has_class_offset(self) -> bool:
        return bool(self.cfg.n_classes) and self.cfg.class_offset

    def _offset(self, onehot: torch.Tensor | None) -> torch.Tensor:
        """The per-voxel offset the decoder's output is a residual around, per row when the model
        has a class offset (onehot: (rows, n_classes))."""
        if onehot is None or not self._has_class_offset:
            return self.output_offset
        per_class = (onehot.to(self.class_offset.dtype) @ self.class_offset.flatten(1))
        return self.output_offset + per_class.view(-1, *self.cfg.data_shape)

    def _init_sampling_buffers(self, full_block: int) -> None:
        """The sampling distribution for cfg.sampling == "aggregate" (chain space), set by
        fit_sampling_distribution; until then sample() draws from the prior. A Gaussian with a
        full covariance over the last ``full_block`` chain coordinates (the top layers) and a
        diagonal one over the others; one per class for a class-conditional model."""
        lead = (self.cfg.n_classes,) if self.cfg.n_classes else ()
        self._full_block = full_block
        eye = torch.eye(full_block).expand(*lead, full_block, full_block).clone()
        self.register_buffer("sampling_loc", torch.zeros(*lead, self.latent_dim))
        self.register_buffer("sampling_scale_tril", eye)
        self.register_buffer("sampling_diag_scale", torch.ones(*lead, self.latent_dim - full_block))
        self.register_buffer("sampling_is_fitted", torch.zeros(lead, dtype=torch.bool))

    # ------------------------------------------------------------------ helpers
    @property
    def noncentered(self) -> bool:
        return self.cfg.parameterization == "noncentered"

    @staticmethod
    def _gaussian(net: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = net(inputs)
        if params.dtype in (torch.float16, torch.bfloat16):
            params = params.float()  # under autocast: latent densities stay in float32
        loc, log_std = params.chunk(2, dim=-1)
        return loc, soft_bound(log_std, *LOG_STD_RANGE)

    def _prior(self, layer: int, z_above: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu_l, log sigma_l) of p(z_l | z_{l+1}) for layer index ``layer`` < L-1."""
        return self._gaussian(self.priors[layer], z_above)

    def _a_parameter(self) -> torch.Tensor:
        """Any parameter: its device and dtype are the model's (noise is drawn to match)."""
        return next(self.posterior_top.parameters())

    def _onehot(self, y, rows: int) -> torch.Tensor | None:
        """Labels -> a (rows, n_classes) one-hot (None for an unconditional model).

        ``y`` is a class index (int) for every row, or a (B,) tensor tiled sample-major to rows."""
        n_classes = self.cfg.n_classes
        if not n_classes:
            if y is not None:
                raise ValueError("y: this model is not class-conditional (n_classes=0); give no label")
            return None
        if y is None:
            raise ValueError(f"y: this model is class-conditional (n_classes={n_classes}); "
                             "give class indices")
        like = self._a_parameter()
        y = torch.as_tensor(y, device=like.device).long()
        if y.dim() == 0:
            y = y.expand(rows)
        if y.dim() != 1:
            raise ValueError(f"y: expected a class index or a (batch,) tensor, got shape {tuple(y.shape)}")
        if bool(((y < 0) | (y >= n_classes)).any()):
            raise ValueError(f"y: class indices must lie in [0, {n_classes - 1}]")
        return nn.functional.one_hot(self._repeat_rows(y, rows), n_classes).to(like.dtype)

    def _top_prior(self, onehot: torch.Tensor | None):
        """(m_y, log s_y) of p(z_L | y) per row, or None for N(0, I)."""
        if onehot is None:
            return None
        loc, log_std = (onehot @ self.class_prior).chunk(2, dim=-1)
        return loc, soft_bound(log_std, *LOG_STD_RANGE)

    @staticmethod
    def _with_label(t: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
        return t if onehot is None else torch.cat([t, onehot.to(t.dtype)], dim=-1)

    def split_layers(self, t: torch.Tensor) -> list[torch.Tensor]:
        """(B, latent_dim) -> one (B, d_l) tensor per latent layer, bottom first."""
        return list(t.split(self.latent_dims, dim=-1))

    def _check_x(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or tuple(x.shape[1:]) != tuple(self.cfg.data_shape):
            raise ValueError(
                f"x has shape {tuple(x.shape)}; expected (batch, *data_shape) with "
                f"data_shape={tuple(self.cfg.data_shape)}"
            )

    def _check_u(self, u: torch.Tensor) -> None:
        if u.dim() != 2 or u.shape[-1] != self.latent_dim:
            raise ValueError(
                f"u has shape {tuple(u.shape)}; expected (batch, latent_dim) with "
                f"latent_dim={self.latent_dim}"
            )

    @staticmethod
    def _repeat_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
        """Tile (B, ...) to ``rows`` = n * B rows, sample-major: row s * B + b is item b."""
        batch = t.shape[0]
        if rows == batch:
            return t
        if rows % batch:
            raise ValueError(
                f"u has {rows} rows, which is not a multiple of x's batch size {batch}"
            )
        return t.repeat(rows // batch, *([1] * (t.dim() - 1)))

    # ------------------------------------------------------- chain <-> latents
    def _eps_to_z(self, eps: list[torch.Tensor], top=None) -> list[torch.Tensor]:
        z = list(eps)
        if top is not None:
            z[-1] = top[0] + torch.exp(top[1]) * eps[-1]
        for layer in reversed(range(len(eps) - 1)):
            mu, log_sigma = self._prior(layer, z[layer + 1])
            z[layer] = mu + torch.exp(log_sigma) * eps[layer]
        return z

    def chain_to_latent(self, u: torch.Tensor, y=None) -> torch.Tensor:
        """Chain coordinates -> z = [z_1, ..., z_L] (B, latent_dim); identity when centered."""
        self._check_u(u)
        top = self._top_prior(self._onehot(self._row_labels(y, u.shape[0]), u.shape[0]))
        if not self.noncentered:
            return u
        return torch.cat(self._eps_to_z(self.split_layers(u), top), dim=-1)

    def latent_to_chain(self, z: torch.Tensor, y=None) -> torch.Tensor:
        """z (B, latent_dim) -> chain coordinates; the inverse of ``chain_to_latent``."""
        self._check_u(z)
        top = self._top_prior(self._onehot(self._row_labels(y, z.shape[0]), z.shape[0]))
        if not self.noncentered:
            return z
        zs = self.split_layers(z)
        eps = list(zs)
        if top is not None:
            eps[-1] = (zs[-1] - top[0]) * torch.exp(-top[1])
        for layer in range(len(zs) - 1):
            mu, log_sigma = self._prior(layer, zs[layer + 1])
            eps[layer] = (zs[layer] - mu) * torch.exp(-log_sigma)
        return torch.cat(eps, dim=-1)

    # ---------------------------------------------------------------- inference
    def _bottom_up(self, x: torch.Tensor, onehot: torch.Tensor | None = None) -> list[torch.Tensor]:
        feature = self._with_label(self.encoder(x), onehot)
        features = []
        for head in self.bottom_up:
            feature = head(feature)
            features.append(feature)
        return features

    def _posterior_top(self, feature: torch.Tensor, top) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, log_std) of q(top layer | x) in chain coordinates, in residual form around the
        class prior N(m_y, s_y^2) when there is one: q = N(m_y + dmu, s_y^2 ds^2)."""
        delta_mu, log_delta_s = self._gaussian(self.posterior_top, feature)
        if top is None:
            return delta_mu, log_delta_s
        if self.noncentered:
            return delta_mu * torch.exp(-top[1]), log_delta_s
        return top[0] + delta_mu, top[1] + log_delta_s

    def _top_down(self, features: list[torch.Tensor], pick, top=None) -> tuple[list, list, list]:
        """Walk q from the top layer down, in chain coordinates.

        ``pick(layer, loc, log_std)`` returns the chain value of that layer (a draw, a given
        point, or the mean). Returns chain values, locs and log-stds per layer, bottom first.
        """
        n_layers = len(self.latent_dims)
        values, locs, log_stds = [None] * n_layers, [None] * n_layers, [None] * n_layers
        z_above = None
        for layer in reversed(range(n_layers)):
            if layer == n_layers - 1:
                loc, log_std = self._posterior_top(features[layer], top)
            else:
                mu, log_sigma = self._prior(layer, z_above)
                residual_in = torch.cat([features[layer], z_above], dim=-1)
                delta_mu, log_delta_s = self._gaussian(self.posterior_residuals[layer], residual_in)
                if self.noncentered:
                    # eps_l = (z_l - mu_l) / sigma_l ~ N(dmu_l / sigma_l, ds_l^2)
                    loc, log_std = delta_mu * torch.exp(-log_sigma), log_delta_s
                else:
                    loc, log_std = mu + delta_mu, log_sigma + log_delta_s
            value = pick(layer, loc, log_std)
            values[layer], locs[layer], log_stds[layer] = value, loc, log_std
            if layer == n_layers - 1:
                z_above = top[0] + torch.exp(top[1]) * value if top is not None and self.noncentered else value
            elif not self.noncentered:
                z_above = value
            else:
                z_above = mu + torch.exp(log_sigma) * value
        return values, locs, log_stds

    def _inference(self, x: torch.Tensor, y, rows: int):
        """Bottom-up features tiled to ``rows`` and the class prior of the top layer per row."""
        onehot = self._onehot(y, x.shape[0])
        features = [self._repeat_rows(f, rows) for f in self._bottom_up(x, onehot)]
        return features, self._top_prior(None if onehot is None else self._repeat_rows(onehot, rows))

    @staticmethod
    def _log_density(values, locs, log_stds) -> torch.Tensor:
        return sum(_normal_log_prob(v, m, s) for v, m, s in zip(values, locs, log_stds))

    def encode(self, x: torch.Tensor, y=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q in chain space, each (B, latent_dim).

        Exact for one latent layer. With L > 1, q is not Gaussian; each layer's Gaussian is then
        taken along the top-down pass conditioned on the posterior *mean* of the layer above,
        an approximation meant for inflated-variance proposals, not for densities.
        """
        self._check_x(x)
        features, top = self._inference(x, y, x.shape[0])
        values, _, log_stds = self._top_down(features, lambda layer, loc, log_std: loc, top)
        return torch.cat(values, dim=-1), 2 * torch.cat(log_stds, dim=-1)

    def rsample(
        self, x: torch.Tensor, n: int = 1, generator: torch.Generator | None = None, y=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised draws u ~ q(. | x[, y]) in chain space and their exact log q.

        u is (n * B, latent_dim), sample-major (``u.view(n, B, -1)[s]`` is draw s for every item);
        log_q is (n * B,).
        """
        self._check_x(x)
        features, top = self._inference(x, y, n * x.shape[0])
        noise = self.split_layers(
            _randn((n * x.shape[0], self.latent_dim), generator, self._a_parameter())
        )
        values, locs, log_stds = self._top_down(
            features, lambda layer, loc, log_std: loc + torch.exp(log_std) * noise[layer], top
        )
        return torch.cat(values, dim=-1), self._log_density(values, locs, log_stds)

    def log_q(self, x: torch.Tensor, u: torch.Tensor, y=None) -> torch.Tensor:
        """log q(u | x) in chain space; u may hold n * B rows (x is then tiled sample-major)."""
        self._check_x(x)
        self._check_u(u)
        features, top = self._inference(x, y, u.shape[0])
        given = self.split_layers(u)
        values, locs, log_stds = self._top_down(features, lambda layer, loc, log_std: given[layer], top)
        return self._log_density(values, locs, log_stds)

    # --------------------------------------------------------------- generative
    def _row_labels(self, y, rows: int):
        """Labels for ``rows`` chain points: a scalar stays, a (B,) tensor is tiled to rows."""
        if y is None or torch.as_tensor(y).dim() == 0:
            return y
        return self._repeat_rows(torch.as_tensor(y), rows)

    def log_prior(self, u: torch.Tensor, y=None) -> torch.Tensor:
        """log p(u[ | y]) in chain space, (B,)."""
        self._check_u(u)
        top = self._top_prior(self._onehot(self._row_labels(y, u.shape[0]), u.shape[0]))
        if self.noncentered:
            return _standard_normal_log_prob(u)
        zs = self.split_layers(u)
        total = (_standard_normal_log_prob(zs[-1]) if top is None
                 else _normal_log_prob(zs[-1], top[0], top[1]))
        for layer in range(len(zs) - 1):
            mu, log_sigma = self._prior(layer, zs[layer + 1])
            total = total + _normal_log_prob(zs[layer], mu, log_sigma)
        return total

    def _decoder_out(self, u: torch.Tensor, y=None) -> torch.Tensor:
        y = self._row_labels(y, u.shape[0])
        z_bottom = self.split_layers(self.chain_to_latent(u, y))[0]
        onehot = self._onehot(y, u.shape[0])
        return self.decoder(self._with_label(z_bottom, onehot)) + self._offset(onehot)

    def log_likelihood_given(self, x: torch.Tensor, u: torch.Tensor, y=None) -> torch.Tensor:
        """log p(x | z_1(u)[, y]), (B,); u may hold n * B rows (x is then tiled sample-major)."""
        self._check_x(x)
        self._check_u(u)
        return self.likelihood.log_prob(self._repeat_rows(x, u.shape[0]), self._decoder_out(u, y))

    def log_joint(self, x: torch.Tensor, u: torch.Tensor, y=None) -> torch.Tensor:
        """log p(x, u[ | y]) in chain space, (B,): the MCMC target, differentiable in u."""
        self._check_x(x)
        self._check_u(u)
        return self.log_prior(u, y) + self.log_likelihood_given(x, u, y)

    def latent_log_joint(self, x: torch.Tensor, z: torch.Tensor, y=None) -> torch.Tensor:
        """log p(x, z[ | y]) at latents z (as ``chain_to_latent`` gives them), (B,): the centered
        density whatever the chain space, so the prior's own parameters (every layer's scales,
        a class prior) enter it; in eps space at fixed eps they would not."""
        with self._as_centered():
            return self.log_joint(x, z, y)

    @contextmanager
    def _as_centered(self):
        """The same weights read in the centered parameterisation meanwhile (chain = latents)."""
        with self._read_as("centered"):
            yield self

    @contextmanager
    def _read_as(self, parameterization: str):
        own = self.cfg
        self.cfg = own.model_copy(update={"parameterization": parameterization})
        try:
            yield self
        finally:
            self.cfg = own

    # ------------------------------------------------------- counterfactuals
    def exogenous(self, u: torch.Tensor, y=None) -> torch.Tensor:
        """The chain point u (of class y) as the model's exogenous noise eps, (B, latent_dim):
        z_L = m_y + s_y eps_L and z_l = mu_l(z_{l+1}) + sigma_l(z_{l+1}) eps_l. What a scan keeps
        when its class is changed (``from_exogenous`` under another label): the abduction step of
        a counterfactual. Noncentered chains already hold eps."""
        if self.noncentered:
            self._check_u(u)
            return u
        with self._read_as("noncentered"):
            return self.latent_to_chain(u, y)

    def from_exogenous(self, eps: torch.Tensor, y=None) -> torch.Tensor:
        """Exogenous noise -> the chain point of class y (the inverse of ``exogenous``)."""
        if self.noncentered:
            self._check_u(eps)
            return eps
        with self._read_as("noncentered"):
            return self.chain_to_latent(eps, y)

    def decode(self, u: torch.Tensor, y=None) -> torch.Tensor:
        """The noise-free scan (likelihood mean) at chain point u, (B, *data_shape)."""
        return self.likelihood.mean(self._decoder_out(u, y))

    def sample_prior(self, n: int, generator: torch.Generator | None = None, y=None) -> torch.Tensor:
        """n chain-space draws from the prior (ancestral, through the same noise, if centered)."""
        eps = _randn((n, self.latent_dim), generator, self._a_parameter())
        top = self._top_prior(self._onehot(self._row_labels(y, n), n))
        if self.noncentered:
            return eps
        return torch.cat(self._eps_to_z(self.split_layers(eps), top), dim=-1)

    @property
    def sampling_fitted(self) -> bool:
        """Whether the aggregate sampling distribution is fitted (for every class)."""
        return bool(self.sampling_is_fitted.all())

    def _class_slot(self, y) -> tuple:
        """Index into the sampling buffers: () unconditional, (class,) conditional."""
        if not self.cfg.n_classes:
            self._onehot(y, 1)  # raises if a label is given
            return ()
        if y is None or torch.as_tensor(y).dim() != 0:
            raise ValueError("y: sampling a class-conditional model needs one class index")
        self._onehot(y, 1)  # validates the range
        return (int(y),)

    def sample_latent(self, n: int, generator: torch.Generator | None = None, y=None) -> torch.Tensor:
        """n chain-space draws from the sampling distribution that cfg.sampling names."""
        slot = self._class_slot(y)
        if self.cfg.sampling == "aggregate" and bool(self.sampling_is_fitted[slot]):
            eps = _randn((n, self.latent_dim), generator, self._a_parameter())
            split = self.latent_dim - self._full_block
            scale = torch.cat([self.sampling_diag_scale[slot] * eps[:, :split],
                               eps[:, split:] @ self.sampling_scale_tril[slot].T], dim=-1)
            return self.sampling_loc[slot] + scale
        return self.sample_prior(n, generator, y)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y=None) -> torch.Tensor:
        """n mean scans, (n, *data_shape), from latents of sample_latent() (of class y)."""
        return self.decode(self.sample_latent(n, generator, y), y)

    def _posterior_moments(self, x: torch.Tensor, y, draws: int, generator) -> tuple[torch.Tensor, ...]:
        """Sums over x's scans of the posterior's first moment, the second moment of the full block
        (outer products) and the squares of the diagonal block, as (count, sum, outer, squares)."""
        split = self.latent_dim - self._full_block
        if len(self.latent_dims) == 1:
            mu, logvar = (t.double() for t in self.encode(x, y))
            full_mu, var = mu[:, split:], logvar.exp()
            outer = full_mu.T @ full_mu + torch.diag(var[:, split:].sum(0))
            squares = (mu[:, :split] ** 2 + var[:, :split]).sum(0)
            return mu.shape[0], mu.sum(0), outer, squares
        n = max(draws, 4 * self._full_block)
        u, _ = self.rsample(x, n=n, generator=generator, y=y)
        u = u.double()
        return u.shape[0], u.sum(0), u[:, split:].T @ u[:, split:], (u[:, :split] ** 2).sum(0)

    @torch.no_grad()
    def fit_sampling_distribution(self, batches, draws: int = 16, generator: torch.Generator | None = None) -> bool:
        """Moment-match a Gaussian to the aggregate posterior (1/N) sum_i q(u | x_i) of the scans
        in ``batches`` (a tensor (B, *data_shape) or an iterable of them; for a class-conditional
        model (x, y) pairs, one Gaussian per class); returns whether it did (for every class).

        One latent layer: q is Gaussian, so the moments are exact (law of total covariance:
        the spread of the posterior means plus the mean posterior variance), full rank even for
        a single scan. Several layers: from max(draws, 4 f) draws of q per scan (f: the size of
        the full-covariance block). If the covariance is not positive definite (non-finite
        latents), or a class has no scans, that class keeps sampling from its prior.
        """
        n_slots = max(self.cfg.n_classes, 1)
        d, f, device = self.latent_dim, self._full_block, self.sampling_loc.device
        count = [0] * n_slots
        total = torch.zeros(n_slots, d, dtype=torch.float64, device=device)
        outer = torch.zeros(n_slots, f, f, dtype=torch.float64, device=device)
        squares = torch.zeros(n_slots, d - f, dtype=torch.float64, device=device)
        for slot, xs, label in self._class_groups(batches):
            k, s, o, q = self._posterior_moments(xs, label, draws, generator)
            count[slot] += k
            total[slot] += s
            outer[slot] += o
            squares[slot] += q
        return self._mark_fitted(count, lambda index, slot: self._store_moments(
            index, count[slot], total[slot], outer[slot], squares[slot]))

    def _class_groups(self, batches):
        """(slot, scans, label) per class present in each batch of ``batches`` (a tensor, an
        (x, y) pair or an iterable of either); slot 0 and label None for an unconditional model."""
        batches = [batches] if isinstance(batches, (torch.Tensor, tuple)) else batches
        device = self.sampling_loc.device
        for batch in batches:
            x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
            x = x.to(device).float()
            if not self.cfg.n_classes:
                yield 0, x, None
                continue
            if y is None:
                raise ValueError("fit_sampling_distribution: a class-conditional model needs (x, y) batches")
            y = torch.as_tensor(y, device=device).long()
            for c in torch.unique(y):
                yield int(c), x[y == c], int(c)

    def _mark_fitted(self, count: list[int], store) -> bool:
        """Store each class's sampling distribution with ``store(index, slot)`` (-> whether it is
        usable) and set its fitted flag; a class without scans, or whose fit is unusable, keeps
        sampling from its prior (with a warning). Returns whether every class is fitted."""
        if sum(count) == 0:
            raise ValueError("fit_sampling_distribution: no scans given")
        fitted_all = True
        for slot in range(len(count)):
            index = (slot,) if self.cfg.n_classes else ()
            fitted = count[slot] > 0 and store(index, slot)
            if not fitted:
                what = f"class {slot}" if self.cfg.n_classes else "this model"
                warnings.warn(f"no usable aggregate posterior for {what} (no scans, or a covariance "
                              "that is not positive definite); it samples from its prior",
                              RuntimeWarning, stacklevel=3)
            self.sampling_is_fitted[index] = fitted
            fitted_all = fitted_all and fitted
        return fitted_all

    def _store_moments(self, index: tuple, count: int, total, outer, squares) -> bool:
        f = self._full_block
        split = self.latent_dim - f
        mean = total / count
        cov = outer / count - torch.outer(mean[split:], mean[split:])
        cov = 0.5 * (cov + cov.T) + 1e-6 * torch.eye(f, dtype=torch.float64, device=cov.device)
        tril, info = torch.linalg.cholesky_ex(cov)
        var = squares / count - mean[:split] ** 2 + 1e-6
        if int(info) != 0 or not torch.isfinite(tril).all() or not bool((var > 0).all()):
            return False
        self.sampling_loc[index] = mean.float()
        self.sampling_scale_tril[index] = tril.float()
        self.sampling_diag_scale[index] = var.sqrt().float()
        return True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # States saved before the sampling distribution existed: load them as unfitted (prior);
        # states from before the diagonal block: it is empty for these models. Class-conditional
        # states saved before the class offset existed: a zero offset is exactly the model they were.
        defaults = {"sampling_loc": self.sampling_loc, "sampling_scale_tril": self.sampling_scale_tril,
                    "sampling_diag_scale": self.sampling_diag_scale,
                    "sampling_is_fitted": torch.zeros_like(self.sampling_is_fitted)}
        if self._has_class_offset:
            defaults["class_offset"] = torch.zeros_like(self.class_offset)
        for name, value in defaults.items():
            state_dict.setdefault(prefix + name, value.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # --------------------------------------------------------------- parameters
    def encoder_parameters(self) -> list[nn.Parameter]:
        """phi: encoder network, bottom-up heads, posterior networks."""
        modules = (self.encoder, self.bottom_up, self.posterior_top, self.posterior_residuals)
        return list(chained.from_iterable(m.parameters() for m in modules))

    def generative_parameters(self) -> list[nn.Parameter]:
        """theta: prior networks, decoder, likelihood parameters."""
        modules = (self.priors, self.decoder, self.likelihood)
        return [*self._own_generative_parameters(), *chained.from_iterable(m.parameters() for m in modules)]

    def _own_generative_parameters(self) -> list[nn.Parameter]:
        own = [self.output_offset]
        if self.cfg.n_classes:
            own.append(self.class_prior)
        if self._has_class_offset:
            own.append(self.class_offset)
        return own

    @torch.no_grad()
    def initialize_from_data(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Set the decoder's output offset to the mean of x in the likelihood's output space; with
        a class offset and labels ``y``, each class's term to its mean's difference from it."""
        self._check_x(x)
        self.output_offset.copy_(self.likelihood.output_for_mean(x.float().mean(0)))
        if self._has_class_offset and y is not None:
            y = torch.as_tensor(y, device=x.device).long()
            for c in torch.unique(y):
                mean = self.likelihood.output_for_mean(x[y == c].float().mean(0))
                self.class_offset[int(c)] = mean - self.output_offset
