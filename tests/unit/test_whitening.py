"""Whitening norms: IterNorm against its closed form, SWBN's online convergence, DBN, gradients."""

from __future__ import annotations

import pytest
import torch

from pitfalls.models.whitening import DBN, SWBN, IterNorm


def _mixed(n=64, c=16, seed=0, scale=0.3):
    """Correlated channels: x = A z with A = I + scale * noise (well conditioned for scale 0.3)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.eye(c) + scale * torch.randn(c, c, generator=g) / c ** 0.5
    z = torch.randn(n, c, 4, 4, generator=g)
    return torch.einsum("dc,nchw->ndhw", a, z).double(), a.double()


def _group_cov(y: torch.Tensor, group: int) -> torch.Tensor:
    g = y.transpose(0, 1).reshape(-1, group, y.shape[0] * y.shape[2] * y.shape[3])
    g = g - g.mean(-1, keepdim=True)
    return g @ g.transpose(1, 2) / g.shape[-1]


def _p_t(lam: torch.Tensor, t: int) -> torch.Tensor:
    p = torch.ones_like(lam)
    for _ in range(t):
        p = 0.5 * (3 * p - p ** 3 * lam)
    return p


@pytest.mark.parametrize("iterations", [3, 5, 8])
def test_iternorm_output_covariance_matches_closed_form(iterations):
    """Cov(Y) = W Σ₀ Wᵀ with W = p_T(Σ_N)/sqrt(tr Σ): along an eigenvalue μ of Σ_N the output
    variance is μ·p_T(μ)² (minus the ε share). Float64: agreement to 1e-9."""
    x, _ = _mixed()
    layer = IterNorm(16, group_size=16, iterations=iterations, eps=1e-5).double().train()
    y = layer(x)
    xg = x.transpose(0, 1).reshape(1, 16, -1)
    xc = xg - xg.mean(-1, keepdim=True)
    sigma = xc @ xc.transpose(1, 2) / xc.shape[-1] + 1e-5 * torch.eye(16, dtype=torch.float64)
    tr = sigma.diagonal(dim1=1, dim2=2).sum()
    mu, v = torch.linalg.eigh(sigma[0] / tr)
    w = v @ torch.diag(_p_t(mu, iterations)) @ v.T / tr.sqrt()
    expected = w @ (sigma[0] - 1e-5 * torch.eye(16, dtype=torch.float64)) @ w.T
    assert torch.allclose(_group_cov(y, 16)[0], expected, atol=1e-9)


def test_iternorm_whitens_well_conditioned_groups_to_near_identity():
    """With T = 5 and the eigenvalues of Σ_N within [0.5/G, 2/G] (G = 16 here), the closed form
    bounds every output eigenvalue to within max |μ p_5(μ)² − 1| over that range (≈ 0.18, set by
    the smallest eigenvalues, which five Newton steps under-whiten) of 1."""
    x, _ = _mixed(n=256, scale=0.15)
    y = IterNorm(16, group_size=16, iterations=5).double().train()(x)
    cov = _group_cov(y, 16)[0]
    mu = torch.linalg.eigvalsh(_group_cov(x, 16)[0])
    mu = mu / mu.sum()
    assert mu.min() >= 0.5 / 16 and mu.max() <= 2 / 16  # the premise of the bound
    grid = torch.linspace(0.5 / 16, 2 / 16, 1000, dtype=torch.float64)
    bound = (grid * _p_t(grid, 5) ** 2 - 1).abs().max().item()
    assert bound < 0.2
    eig = torch.linalg.eigvalsh(cov)
    assert (eig - 1).abs().max().item() <= bound + 1e-6


def test_iternorm_gradcheck_float64():
    torch.manual_seed(0)
    layer = IterNorm(4, group_size=2, iterations=3).double().train()
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-5)


def test_iternorm_eval_uses_running_estimates_and_groups_follow_gcd():
    layer = IterNorm(24, group_size=16)
    assert layer.group_size == 8 and layer.num_groups == 3
    x, _ = _mixed(c=24)
    layer.double().train()(x)
    layer.eval()
    a = layer(x[:2])
    b = layer(torch.cat([x[:1], x[5:6]]))
    assert torch.equal(a[0], b[0])  # eval: batch-independent


def test_swbn_running_whitening_converges_to_inverse_sqrt_correlation():
    """Stationary stream x = A z: W should approach R^(-1/2), R the population correlation of
    the group. The relative error must fall over steps and end below 0.15 after 1500 steps
    (batches of 1024 samples leave ~1/sqrt(1024) ≈ 0.03 noise per entry of each step's R)."""
    torch.manual_seed(0)
    _, a = _mixed(c=16, scale=0.6)
    cov = a @ a.T
    d = cov.diagonal().rsqrt()
    r = d[:, None] * cov * d[None, :]
    evals, evecs = torch.linalg.eigh(r)
    target = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    layer = SWBN(16, group_size=16).double().train()
    errors = []
    for step in range(1500):
        z = torch.randn(64, 16, 4, 4, dtype=torch.float64)
        layer(torch.einsum("dc,nchw->ndhw", a, z))
        if step % 300 == 299:
            errors.append(((layer.running_wm[0] - target).norm() / target.norm()).item())
    assert errors[0] > errors[-1] and errors[-1] < 0.15, errors
    w0 = SWBN(16, group_size=16).double().running_wm[0]
    assert ((w0 - target).norm() / target.norm()).item() > 2 * errors[-1]


def test_swbn_whitening_matrix_gets_no_gradient_and_eval_is_deterministic():
    torch.manual_seed(0)
    layer = SWBN(8, group_size=4).train()
    x = torch.randn(6, 8, 3, 3, requires_grad=True)
    layer(x).square().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    assert not layer.running_wm.requires_grad
    layer.eval()
    before = layer.running_wm.clone()
    a, b = layer(x[:3]), layer(torch.cat([x[:1], torch.randn(2, 8, 3, 3)]))
    assert torch.equal(a[0], b[0]) and torch.equal(layer(x[:3]), a)
    assert torch.equal(before, layer.running_wm)  # eval does not update


def test_dbn_whitens_exactly():
    x, _ = _mixed(n=128)
    y = DBN(16, group_size=16, eps=1e-9).double().train()(x)
    assert torch.allclose(_group_cov(y, 16)[0], torch.eye(16, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("cls", [IterNorm, SWBN, DBN])
def test_frozen_statistics_stop_updates(cls):
    layer = cls(8, group_size=4).train()
    layer.freeze_statistics()
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(torch.randn(4, 8, 3, 3))
    assert all(torch.equal(state[k], v) for k, v in layer.state_dict().items())
