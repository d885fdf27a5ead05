"""What the network's output means: the velocity itself, or the clean data (x-prediction, as in JiT).

Both are trained with the same velocity loss; `data` only reparameterises the output. On the path of stage k,
z = sigma n + (1 - sigma) x with global sigma = e_k + sigma' (c_k - e_k), so the local velocity is

    dz/dsigma' = (c_k - e_k) (n - x) = (c_k - e_k) (z - x) / sigma.

With `data` the network outputs x_hat and v_hat = (c_k - e_k) (z - x_hat) / max(sigma, MIN_SIGMA). The skip
path z / sigma is exact, so the network need not learn to copy the noise through itself: in pixel space it
only draws the (flat, low-dimensional) image. For stages after a bridge the path is z = sigma n + (1 - sigma) x
only up to the bridge's fit; any velocity is still reachable (x_hat = z - v sigma / (c_k - e_k)).

Each kind is a class registered under its `flow.prediction` name (parameters, if a kind declares any, from
`flow.prediction_params`); an instance is called as prediction(output, z, sigma, width) -> velocity, with sigma
the global sigma (B,) and width = c_k - e_k.
"""

from __future__ import annotations

import torch

from ..registry import PREDICTIONS, Component

MIN_SIGMA = 0.05  # JiT's clamp: 1 / sigma would amplify the output's error without bound at the data end


class Prediction(Component):
    """What the network's output means, as a map from the output to the stage velocity."""

    def __call__(self, output: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, width: float) -> torch.Tensor:
        raise NotImplementedError


@PREDICTIONS.register("velocity")
class VelocityPrediction(Prediction):
    """The network predicts the stage's velocity directly."""

    def __call__(self, output, z, sigma, width):
        return output


@PREDICTIONS.register("data")
class DataPrediction(Prediction):
    """The network predicts the clean data x; the velocity is width (z - x) / sigma."""

    def __call__(self, output, z, sigma, width):
        sigma = sigma.to(torch.float32).clamp(min=MIN_SIGMA).view(-1, *([1] * (z.ndim - 1)))
        return width * (z.float() - output.float()) / sigma
