"""Pyramid Flow's non-learnable jump between stages (the `renoise` ablation)."""

from __future__ import annotations

from ..flow import block_noise, down, interpolate, up
from .base import BridgeFlow, register


@register("renoise")
class RenoiseBridge(BridgeFlow):
    """z <- alpha Up(z) + beta n', n' block noise with per-2x2 covariance (1 + gamma) I - gamma 11^T.

    Up(z) repeats each coarse value over its 2x2 block (covariance 11^T); beta is chosen so that the 11^T
    parts cancel and the result is white noise at the corrected start sigma c_k (schedule.start_sigmas).
    """

    learnable = False
    adds_noise = True

    def transition(self, u, k, generator):
        alpha, beta = self.schedule.renoise_coefficients(k)
        noise = block_noise(u.shape, self.schedule.gamma, generator, device=u.device, dtype=u.dtype)
        return alpha * u + beta * noise

    def training_start(self, x_k, n_k, k, detail=False):
        """Pyramid Flow's corrected start c_k n^(k) + (1 - c_k) Up(x^(k-1)): the point its jump lands on in law
        (the jump draws its own noise, so no detail noise is added)."""
        return interpolate(up(down(x_k)), n_k, self.schedule.start_sigmas[k])
