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

        # --- inference network (phi) ---
        self.encoder, feature_dim = build_encoder(cfg)
        heads, head_dims, in_dim = [], [], feature_dim
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
        self.decoder = build_decoder(cfg, self.latent_dims[0])
        self.likelihood = build_likelihood(cfg)
        # The decoder predicts a residual around a per-voxel offset that starts at the training
        # data's mean image (initialize_from_data). Without it, an untrained decoder can only
        # brighten its output through large latents, and training drives the encoder's scales
        # to their bound before the decoder's biases catch up: prior draws then decode to noise.
        self.output_offset = nn.Parameter(torch.zeros(cfg.data_shape))
        # The sampling distribution for cfg.sampling == "aggregate" (chain space), set by
        # fit_sampling_distribution; until then sample() draws from the prior.
        self.register_buffer("sampling_loc", torch.zeros(self.latent_dim))
        self.register_buffer("sampling_scale_tril", torch.eye(self.latent_dim))
        self.register_buffer("sampling_is_fitted", torch.zeros((), dtype=torch.bool))
        initialize_linear(self, cfg.init)

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
    def _eps_to_z(self, eps: list[torch.Tensor]) -> list[torch.Tensor]:
        z = list(eps)
        for layer in reversed(range(len(eps) - 1)):
            mu, log_sigma = self._prior(layer, z[layer + 1])
            z[layer] = mu + torch.exp(log_sigma) * eps[layer]
        return z

    def chain_to_latent(self, u: torch.Tensor) -> torch.Tensor:
        """Chain coordinates -> z = [z_1, ..., z_L] (B, latent_dim); identity when centered."""
        self._check_u(u)
        if not self.noncentered:
            return u
        return torch.cat(self._eps_to_z(self.split_layers(u)), dim=-1)

    def latent_to_chain(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, latent_dim) -> chain coordinates; the inverse of ``chain_to_latent``."""
        self._check_u(z)
        if not self.noncentered:
            return z
        zs = self.split_layers(z)
        eps = list(zs)
        for layer in range(len(zs) - 1):
            mu, log_sigma = self._prior(layer, zs[layer + 1])
            eps[layer] = (zs[layer] - mu) * torch.exp(-log_sigma)
        return torch.cat(eps, dim=-1)

    # ---------------------------------------------------------------- inference
    def _bottom_up(self, x: torch.Tensor) -> list[torch.Tensor]:
        feature = self.encoder(x)
        features = []
        for head in self.bottom_up:
            feature = head(feature)
            features.append(feature)
        return features

    def _top_down(self, features: list[torch.Tensor], pick) -> tuple[list, list, list]:
        """Walk q from the top layer down, in chain coordinates.

        ``pick(layer, loc, log_std)`` returns the chain value of that layer (a draw, a given
        point, or the mean). Returns chain values, locs and log-stds per layer, bottom first.
        """
        n_layers = len(self.latent_dims)
        values, locs, log_stds = [None] * n_layers, [None] * n_layers, [None] * n_layers
        z_above = None
        for layer in reversed(range(n_layers)):
            if layer == n_layers - 1:
                loc, log_std = self._gaussian(self.posterior_top, features[layer])
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
            if layer == n_layers - 1 or not self.noncentered:
                z_above = value
            else:
                z_above = mu + torch.exp(log_sigma) * value
        return values, locs, log_stds

    @staticmethod
    def _log_density(values, locs, log_stds) -> torch.Tensor:
        return sum(_normal_log_prob(v, m, s) for v, m, s in zip(values, locs, log_stds))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q in chain space, each (B, latent_dim).

        Exact for one latent layer. With L > 1, q is not Gaussian; each layer's Gaussian is then
        taken along the top-down pass conditioned on the posterior *mean* of the layer above,
        an approximation meant for inflated-variance proposals, not for densities.
        """
        self._check_x(x)
        values, _, log_stds = self._top_down(self._bottom_up(x), lambda layer, loc, log_std: loc)
        return torch.cat(values, dim=-1), 2 * torch.cat(log_stds, dim=-1)

    def rsample(
        self, x: torch.Tensor, n: int = 1, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised draws u ~ q(. | x) in chain space and their exact log q.

        u is (n * B, latent_dim), sample-major (``u.view(n, B, -1)[s]`` is draw s for every item);
        log_q is (n * B,).
        """
        self._check_x(x)
        features = [self._repeat_rows(f, n * x.shape[0]) for f in self._bottom_up(x)]
        noise = self.split_layers(
            _randn((n * x.shape[0], self.latent_dim), generator, self._a_parameter())
        )
        values, locs, log_stds = self._top_down(
            features, lambda layer, loc, log_std: loc + torch.exp(log_std) * noise[layer]
        )
        return torch.cat(values, dim=-1), self._log_density(values, locs, log_stds)

    def log_q(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """log q(u | x) in chain space; u may hold n * B rows (x is then tiled sample-major)."""
        self._check_x(x)
        self._check_u(u)
        features = [self._repeat_rows(f, u.shape[0]) for f in self._bottom_up(x)]
        given = self.split_layers(u)
        values, locs, log_stds = self._top_down(features, lambda layer, loc, log_std: given[layer])
        return self._log_density(values, locs, log_stds)

    # --------------------------------------------------------------- generative
    def log_prior(self, u: torch.Tensor) -> torch.Tensor:
        """log p(u) in chain space, (B,)."""
        self._check_u(u)
        if self.noncentered:
            return _standard_normal_log_prob(u)
        zs = self.split_layers(u)
        total = _standard_normal_log_prob(zs[-1])
        for layer in range(len(zs) - 1):
            mu, log_sigma = self._prior(layer, zs[layer + 1])
            total = total + _normal_log_prob(zs[layer], mu, log_sigma)
        return total

    def _decoder_out(self, u: torch.Tensor) -> torch.Tensor:
        z_bottom = self.split_layers(self.chain_to_latent(u))[0]
        return self.decoder(z_bottom) + self.output_offset

    def log_likelihood_given(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """log p(x | z_1(u)), (B,); u may hold n * B rows (x is then tiled sample-major)."""
        self._check_x(x)
        self._check_u(u)
        return self.likelihood.log_prob(self._repeat_rows(x, u.shape[0]), self._decoder_out(u))

    def log_joint(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """log p(x, u) in chain space, (B,): the MCMC target, differentiable in u."""
        self._check_x(x)
        self._check_u(u)
        return self.log_prior(u) + self.log_likelihood_given(x, u)

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        """The noise-free scan (likelihood mean) at chain point u, (B, *data_shape)."""
        return self.likelihood.mean(self._decoder_out(u))

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n chain-space draws from the prior (ancestral, through the same noise, if centered)."""
        eps = _randn((n, self.latent_dim), generator, self._a_parameter())
        if self.noncentered:
            return eps
        return torch.cat(self._eps_to_z(self.split_layers(eps)), dim=-1)

    @property
    def sampling_fitted(self) -> bool:
        return bool(self.sampling_is_fitted)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n chain-space draws from the sampling distribution that cfg.sampling names."""
        if self.cfg.sampling == "aggregate" and self.sampling_fitted:
            eps = _randn((n, self.latent_dim), generator, self._a_parameter())
            return self.sampling_loc + eps @ self.sampling_scale_tril.T
        return self.sample_prior(n, generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n mean scans, (n, *data_shape), from latents of sample_latent()."""
        return self.decode(self.sample_latent(n, generator))

    @torch.no_grad()
    def fit_sampling_distribution(self, batches, draws: int = 16, generator: torch.Generator | None = None) -> bool:
        """Moment-match a Gaussian to the aggregate posterior (1/N) sum_i q(u | x_i) of the scans
        in ``batches`` (a tensor (B, *data_shape) or an iterable of them); returns whether it did.

        One latent layer: q is Gaussian, so the moments are exact (law of total covariance:
        the spread of the posterior means plus the mean posterior variance), full rank even for
        a single scan. Several layers: from max(draws, 4 d) draws of q per scan. If the
        covariance is not positive definite (non-finite latents), the model keeps sampling from
        its prior.
        """
        batches = [batches] if isinstance(batches, torch.Tensor) else batches
        d, device = self.latent_dim, self.sampling_loc.device
        total = torch.zeros(d, dtype=torch.float64, device=device)
        outer = torch.zeros(d, d, dtype=torch.float64, device=device)
        count = 0
        for x in batches:
            x = x.to(device).float()
            if len(self.latent_dims) == 1:
                mu, logvar = (t.double() for t in self.encode(x))
                total += mu.sum(0)
                outer += mu.T @ mu + torch.diag(logvar.exp().sum(0))
                count += mu.shape[0]
            else:
                u, _ = self.rsample(x, n=max(draws, 4 * d), generator=generator)
                u = u.double()
                total += u.sum(0)
                outer += u.T @ u
                count += u.shape[0]
        if count == 0:
            raise ValueError("fit_sampling_distribution: no scans given")
        mean = total / count
        cov = outer / count - torch.outer(mean, mean)
        cov = 0.5 * (cov + cov.T) + 1e-6 * torch.eye(d, dtype=torch.float64, device=device)
        tril, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0 or not torch.isfinite(tril).all():
            warnings.warn("the aggregate posterior's covariance is not positive definite; "
                          "this model samples from its prior", RuntimeWarning, stacklevel=2)
            self.sampling_is_fitted.fill_(False)
            return False
        self.sampling_loc.copy_(mean.float())
        self.sampling_scale_tril.copy_(tril.float())
        self.sampling_is_fitted.fill_(True)
        return True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # States saved before the sampling distribution existed: load them as unfitted (prior).
        defaults = {"sampling_loc": self.sampling_loc, "sampling_scale_tril": self.sampling_scale_tril,
                    "sampling_is_fitted": torch.zeros((), dtype=torch.bool)}
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
        return [self.output_offset, *chained.from_iterable(m.parameters() for m in modules)]

    @torch.no_grad()
    def initialize_from_data(self, x: torch.Tensor) -> None:
        """Set the decoder's output offset to the mean of x in the likelihood's output space."""
        self._check_x(x)
        self.output_offset.copy_(self.likelihood.output_for_mean(x.float().mean(0)))


def build_model(cfg: ModelConfig) -> VAE:
    return VAE(cfg)
