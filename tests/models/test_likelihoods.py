import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from models.config import ModelConfig
from models.likelihoods import (
    BernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    build_likelihood,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_bernoulli_matches_torch_on_binary_data():
    g = _gen()
    out = torch.randn(4, 1, 3, 5, generator=g) * 3
    x = (torch.rand(4, 1, 3, 5, generator=g) > 0.5).float()
    lik = BernoulliLikelihood()
    expected = Bernoulli(logits=out).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x, out), expected)


def test_bernoulli_on_grey_levels_is_minus_cross_entropy():
    g = _gen(1)
    out = torch.randn(3, 2, 4, generator=g, dtype=torch.float64) * 4
    x = torch.rand(3, 2, 4, generator=g, dtype=torch.float64)
    p = torch.sigmoid(out)
    expected = (x * torch.log(p) + (1 - x) * torch.log1p(-p)).flatten(1).sum(1)
    torch.testing.assert_close(BernoulliLikelihood().log_prob(x, out), expected)
    mean = BernoulliLikelihood().mean(out)
    assert mean.min() >= 0 and mean.max() <= 1


def test_gaussian_matches_torch_normal_and_clamps():
    g = _gen(2)
    out = torch.randn(5, 1, 4, 4, generator=g)
    x = torch.randn(5, 1, 4, 4, generator=g)
    lik = GaussianLikelihood(log_var=-1.3)
    expected = Normal(out, math.exp(-1.3 / 2)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x, out), expected)
    with torch.no_grad():
        lik.log_var.fill_(10.0)  # beyond the clamp: behaves as log-variance 3
    expected = Normal(out, math.exp(3.0 / 2)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(x, out), expected)
    torch.testing.assert_close(lik.mean(out), out)


def test_gaussian_log_var_learned_or_frozen():
    learned = GaussianLikelihood(-2.0, learn=True)
    frozen = GaussianLikelihood(-2.0, learn=False)
    assert [n for n, _ in learned.named_parameters()] == ["log_var"]
    assert list(frozen.parameters()) == []
    assert "log_var" in frozen.state_dict()
    assert frozen.log_var.item() == pytest.approx(-2.0)


def _all_bins(n_bins=256, dtype=torch.float64):
    return (torch.arange(n_bins, dtype=dtype) / (n_bins - 1)).view(n_bins, 1, 1)


@pytest.mark.parametrize("location", [-0.3, 0.0, 0.02, 0.5, 0.97, 1.0, 1.4])
@pytest.mark.parametrize("log_scale", [-7.0, -4.0, -1.0, 2.0])
def test_discretized_logistic_sums_to_one_over_bins(location, log_scale):
    lik = DiscretizedLogisticLikelihood(log_scale).double()
    x = _all_bins()
    out = torch.full_like(x, location)
    total = torch.logsumexp(lik.log_prob(x, out), dim=0)
    assert abs(total.item()) < 1e-9


def test_discretized_logistic_approximates_density_times_bin_width():
    log_scale = -2.0  # scale 0.135, about 35 bin widths: the density is flat across a bin
    lik = DiscretizedLogisticLikelihood(log_scale).double()
    x = _all_bins()[20:236]  # away from the edge bins that take the tails
    location = 0.43
    out = torch.full_like(x, location)
    scale = math.exp(log_scale)
    t = (x - location) / scale
    density = torch.exp(-t) / (scale * (1 + torch.exp(-t)) ** 2)
    expected = torch.log(density / 255).flatten()
    torch.testing.assert_close(lik.log_prob(x, out), expected, rtol=0, atol=2e-4)


def test_discretized_logistic_edge_bins_take_the_tails():
    lik = DiscretizedLogisticLikelihood(-3.0).double()
    scale = math.exp(-3.0)
    location = torch.tensor(0.2, dtype=torch.float64)
    half = 0.5 / 255
    lower = lik.log_prob(torch.zeros(1, 1, 1, dtype=torch.float64), location.view(1, 1, 1))
    upper = lik.log_prob(torch.ones(1, 1, 1, dtype=torch.float64), location.view(1, 1, 1))
    torch.testing.assert_close(lower, torch.log(torch.sigmoid((half - location) / scale)).view(1))
    torch.testing.assert_close(
        upper, torch.log(1 - torch.sigmoid((1 - half - location) / scale)).view(1)
    )


def test_discretized_logistic_is_stable_far_in_the_tails():
    # Bins hundreds of scales away from the location: a naive log(sigmoid(a) - sigmoid(b)) is
    # -inf in float32 (and in float64 on the upper tail, where both sigmoids round to 1).
    lik32 = DiscretizedLogisticLikelihood(-7.0)
    x = (torch.tensor([128.0, 0.0, 255.0, 77.0, 10.0]) / 255).view(5, 1, 1)
    out = torch.tensor([0.0, 1.0, 0.0, 0.31, 0.5]).view(5, 1, 1).requires_grad_(True)
    got = lik32.log_prob(x, out)
    assert torch.isfinite(got).all()
    (grad,) = torch.autograd.grad(got.sum(), out)
    assert torch.isfinite(grad).all()

    # float64 reference, using the mirrored form 1 - sigmoid(t) = sigmoid(-t) on the upper tail
    x64, out64 = x.double(), out.detach().double()
    s = math.exp(-7.0)
    half = 0.5 / 255
    a, b = (x64 + half - out64) / s, (x64 - half - out64) / s
    lower_tail = torch.log(torch.sigmoid(a) - torch.sigmoid(b))
    upper_tail = torch.log(torch.sigmoid(-b) - torch.sigmoid(-a))
    reference = torch.where(b > 0, upper_tail, lower_tail)
    reference[1] = torch.nn.functional.logsigmoid(a[1])  # x = 0: first bin
    reference[2] = torch.nn.functional.logsigmoid(-b[2])  # x = 1: last bin
    assert torch.isfinite(reference).all()
    torch.testing.assert_close(got.double(), reference.flatten(), rtol=1e-5, atol=1e-3)
    assert got[0] < -500  # genuinely tiny probability, not clamped to something moderate


def test_discretized_logistic_snaps_to_bins_and_sums_over_voxels():
    g = _gen(3)
    lik = DiscretizedLogisticLikelihood(-3.0).double()
    k = torch.randint(0, 256, (2, 3, 4), generator=g).double()
    x = k / 255
    jittered = (
        x + (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5) * 0.9 / 255
    ).clamp(0, 1)
    out = torch.rand(2, 3, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(lik.log_prob(jittered, out), lik.log_prob(x, out))
    per_voxel = torch.stack(
        [
            lik.log_prob(x[:, i : i + 1, j : j + 1], out[:, i : i + 1, j : j + 1])
            for i in range(3)
            for j in range(4)
        ]
    )
    torch.testing.assert_close(lik.log_prob(x, out), per_voxel.sum(0))
    assert lik.mean(torch.tensor([-0.5, 0.3, 1.7])).tolist() == pytest.approx([0.0, 0.3, 1.0])


def test_build_likelihood_kinds_and_initial_scale():
    base = {"data_shape": (1, 4, 4), "arch": "mlp", "obs_log_var": -4.0}
    gaussian = build_likelihood(ModelConfig(likelihood="gaussian", **base))
    logistic = build_likelihood(ModelConfig(likelihood="logistic", **base))
    bernoulli = build_likelihood(ModelConfig(likelihood="bernoulli", **base))
    assert isinstance(gaussian, GaussianLikelihood) and gaussian.log_var.item() == -4.0
    assert isinstance(logistic, DiscretizedLogisticLikelihood) and logistic.log_scale.item() == -2.0
    assert isinstance(bernoulli, BernoulliLikelihood)
    frozen = build_likelihood(ModelConfig(likelihood="logistic", learn_obs_var=False, **base))
    assert list(frozen.parameters()) == []
