"""Whitening normalizers for conv maps: IterNorm, stochastic whitening BN (SWBN), and DBN (ZCA).

All three whiten channels in groups of `group_size` (when the channel count is not divisible,
the group size is gcd(channels, group_size): the largest size <= group_size dividing both).
Every frame and every spatial position is a sample: an input (N, C, H, W) gives N*H*W samples
per channel. Like BN they use batch statistics in train mode (so they are batch-dependent and
can leak future frames) and running estimates in eval mode. `freeze_statistics()` makes a layer
use its running estimates for good (frozen stages), with the affine still in place.

IterNorm (Huang et al., "Iterative Normalization: Beyond Standardization towards Efficient
Whitening", CVPR 2019, Algorithm 1). Per group, with centred samples Xc (G x m):
    Σ = Xc Xcᵀ / m + εI,   Σ_N = Σ / tr(Σ),   P_0 = I,
    P_k = ½ (3 P_{k-1} − P_{k-1}³ Σ_N)   for k = 1..T,     W = P_T / sqrt(tr(Σ)),   Y = W Xc.
Back-propagation goes through the iterations (autograd). Running mean and running W are EMAs.
After T iterations an eigenvalue λ of Σ_N is mapped to an output variance λ·p_T(λ)², where
p_0 = 1, p_k = ½(3p_{k-1} − p_{k-1}³ λ): exactly 1 only as T → ∞, so IterNorm whitens
*approximately* (less for small eigenvalues); tests check the output covariance against this
closed form.

SWBN (Zhang et al., "Stochastic Whitening Batch Normalization", CVPR 2021). The input is first
standardized per channel with batch statistics, x̂ = (x − μ_B)/σ_B (as BN; running μ, σ² kept
for eval). Per group, a whitening matrix W is *not* recomputed each step but estimated online:
in each train-mode forward, with the group's batch correlation matrix R = x̂ x̂ᵀ / m, W takes one
stochastic gradient step on the Frobenius whitening criterion

    C_Fro(W) = ¼ ‖W R Wᵀ − I‖²_F,     ∇_W C_Fro = (W R Wᵀ − I) W R,
    W ← W − (η / G) (W R Wᵀ − I) W R          (η = `lr`, default 0.5; G = group size)

and the output is Y = W x̂ with W held fixed in the backward pass (no gradient flows into W;
gradients flow through the standardization). Eval mode uses the running μ, σ² and the current
W. Starting from W = I, W stays a polynomial in R on a stationary stream, so it converges to the
symmetric (ZCA) solution R^(-1/2). Deviations and choices, since we implement from the paper's
description rather than its code: the step is divided by G because R's eigenvalues are at most G
(its trace is G): along an eigenvalue λ of R the linearised update contracts the error by
1 − 2ηλ/G, so any η < 1 is stable and the slowest direction (smallest λ) sets the speed; the
paper's KL criterion is not implemented.

DBN (Huang et al., "Decorrelated Batch Normalization", CVPR 2018), for reference: ZCA whitening
W = V diag(λ + ε)^(-1/2) Vᵀ from a symmetric eigendecomposition of each group's covariance. It
needs more samples than the group size at every layer (N·H·W > G): with fewer, the covariance is
rank-deficient and W amplifies the null directions by 1/sqrt(ε) (small late-stage maps and tiny
batches); IterNorm and SWBN degrade gracefully there.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (C/G, G, N*H*W)."""
    n, c = x.shape[:2]
    return x.transpose(0, 1).reshape(c // group_size, group_size, -1)


def _ungroup(y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    n, c, h, w = shape
    return y.reshape(c, n, h, w).transpose(0, 1)


class _Whitening(nn.Module):
    """Shared parts: group layout, affine, frozen flag."""

    def __init__(self, channels: int, group_size: int = 16, eps: float = 1e-5,
                 momentum: float = 0.1):
        super().__init__()
        self.num_channels = channels
        self.group_size = math.gcd(channels, group_size)
        self.num_groups = channels // self.group_size
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        eye = torch.eye(self.group_size).expand(self.num_groups, -1, -1).clone()
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_wm", eye)
        self.statistics_frozen = False

    def freeze_statistics(self) -> None:
        """Use the running estimates in train mode too, and stop updating them."""
        self.statistics_frozen = True

    def _use_batch(self) -> bool:
        return self.training and not self.statistics_frozen

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def _centred_whitening(self, x: torch.Tensor, matrix) -> torch.Tensor:
        """Y = W (x − mean): batch mean and W = matrix(centred groups) in training (their EMAs
        updated), running mean and running W otherwise (IterNorm, DBN)."""
        xg = _groups(x, self.group_size)
        if self._use_batch():
            mean = xg.mean(-1, keepdim=True)
            xc = xg - mean
            wm = matrix(xc)
            with torch.no_grad():
                self.running_mean.lerp_(mean.reshape(-1), self.momentum)
                self.running_wm.lerp_(wm.detach(), self.momentum)
        else:
            xc = xg - self.running_mean.view(self.num_groups, self.group_size, 1)
            wm = self.running_wm
        return self._affine(_ungroup(torch.bmm(wm, xc), x.shape))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, group_size={self.group_size}, eps={self.eps}"


class IterNorm(_Whitening):
    def __init__(self, channels: int, group_size: int = 16, iterations: int = 5,
                 eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(channels, group_size, eps, momentum)
        self.iterations = iterations

    def whitening_matrix(self, xc: torch.Tensor) -> torch.Tensor:
        """W = P_T / sqrt(tr Σ) for centred groups xc (g, G, m)."""
        g, size, m = xc.shape
        eye = torch.eye(size, dtype=xc.dtype, device=xc.device).expand(g, -1, -1)
        sigma = torch.baddbmm(eye, xc, xc.transpose(1, 2), beta=self.eps, alpha=1.0 / m)
        trace = sigma.diagonal(dim1=1, dim2=2).sum(-1).view(g, 1, 1)
        sigma_n = sigma / trace
        p = eye
        for _ in range(self.iterations):
            p = 1.5 * p - 0.5 * torch.bmm(torch.matrix_power(p, 3), sigma_n)
        return p / trace.sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._centred_whitening(x, self.whitening_matrix)


class SWBN(_Whitening):
    def __init__(self, channels: int, group_size: int = 16, lr: float = 0.5,
                 eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(channels, group_size, eps, momentum)
        self.lr = lr
        self.register_buffer("running_var", torch.ones(channels))

    @torch.no_grad()
    def update_whitening(self, xhat: torch.Tensor) -> None:
        """One Frobenius-criterion step on W from standardized groups xhat (g, G, m)."""
        m = xhat.shape[-1]
        r = torch.bmm(xhat, xhat.transpose(1, 2)) / m
        w = self.running_wm
        y = torch.bmm(torch.bmm(w, r), w.transpose(1, 2))
        eye = torch.eye(self.group_size, dtype=w.dtype, device=w.device)
        grad = torch.bmm(torch.bmm(y - eye, w), r)
        w.sub_(grad, alpha=self.lr / self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg = _groups(x, self.group_size)
        if self._use_batch():
            mean = xg.mean(-1, keepdim=True)
            var = xg.var(-1, unbiased=False, keepdim=True)
            xhat = (xg - mean) / (var + self.eps).sqrt()
            with torch.no_grad():
                m = xg.shape[-1]
                self.running_mean.lerp_(mean.reshape(-1), self.momentum)
                self.running_var.lerp_(var.reshape(-1) * m / max(m - 1, 1), self.momentum)
            self.update_whitening(xhat.detach().to(self.running_wm.dtype))
        else:
            shape = (self.num_groups, self.group_size, 1)
            xhat = (xg - self.running_mean.view(shape)) / (self.running_var.view(shape) + self.eps).sqrt()
        return self._affine(_ungroup(torch.bmm(self.running_wm.detach(), xhat), x.shape))


class DBN(_Whitening):
    def whitening_matrix(self, xc: torch.Tensor) -> torch.Tensor:
        """ZCA: V diag(λ + ε)^(-1/2) Vᵀ of the centred groups' covariance."""
        sigma = torch.bmm(xc, xc.transpose(1, 2)) / xc.shape[-1]
        evals, evecs = torch.linalg.eigh(sigma)
        return evecs @ torch.diag_embed((evals.clamp_min(0) + self.eps).rsqrt()) @ evecs.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._centred_whitening(x, self.whitening_matrix)
