"""`PyramidFlow`: the one owner of NAMI's flow math, after SiT's `Transport`.

It holds the schedule, the bridge, the in-window timestep density, what the network predicts, detail noise,
the sampler's timestep grid, the stage mix and caption dropout, and offers the training loss and the sampler.
The network is passed in as a function

    model_fn(z, model_time, k, cond) -> output      (z: (B, C, H, W) at stage k's size, model_time: (B,))

so this module needs neither the model class nor the text encoder: `cond` is whatever the network takes
(the kit passes a `TextEmbedding`). Local sigma' becomes model time in exactly one place per path: training
draws sigma' and maps it through the schedule's window, sampling reads (T, sigma') pairs from its grid; the
output becomes a velocity from the global sigma, never from T.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..registry import PREDICTIONS, TIMESTEP_DENSITIES, TIMESTEP_GRIDS
from .densities import LogitNormal, TimestepDensity
from .grids import LinearGrid, StageGrid, TimestepGrid
from .prediction import Prediction, VelocityPrediction
from .pyramid import Generators, data_pyramid, noise_pyramid
from .sampler import SampleTrace, euler_stage
from .schedule import PyramidSchedule
from .training import Bridge, FlowSample, StageMix, bridge_jump, bridge_pair, stage_endpoints

ModelFn = Callable[[torch.Tensor, torch.Tensor, int, Any], torch.Tensor]


@dataclass
class StageLosses:
    """Per-stage mean squared errors of one training batch and their sample-weighted mean."""

    stages: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)

    @property
    def total(self) -> torch.Tensor:
        """The batch loss: the mean over samples, each stage's mean weighted by its sample count."""
        return sum(n * loss for n, loss in zip(self.counts, self.losses)) / sum(self.counts)

    def __iter__(self):
        return iter(zip(self.stages, self.counts, self.losses))


@dataclass
class PyramidFlow:
    """Schedule + bridge + density + prediction + detail noise + grid: losses and samples.

    The density, prediction and grid are registered components (`nami.registry`), built once from their config
    blocks by `from_config`; the defaults are logit-normal(0, 1), velocity and linear."""

    schedule: PyramidSchedule
    bridge: Bridge | None = None
    density: TimestepDensity = field(default_factory=LogitNormal)
    prediction: Prediction = field(default_factory=VelocityPrediction)
    detail_noise: bool = False
    timestep_grid: TimestepGrid = field(default_factory=LinearGrid)
    mix: StageMix = StageMix()
    caption_dropout: float = 0.0

    @classmethod
    def from_config(cls, cfg, bridge: Bridge | None, schedule: PyramidSchedule | None = None) -> "PyramidFlow":
        """The flow a `NamiConfig` describes (flow.*, bridge.detail_noise, sampler.timestep_grid and their
        parameter blocks), over `schedule` when given (`build_parts` builds it once for the bridge and the flow)."""
        f, s = cfg.flow, cfg.sampler
        return cls(
            schedule=schedule if schedule is not None else PyramidSchedule.from_config(f), bridge=bridge,
            density=TIMESTEP_DENSITIES.create(f.timestep_density, params=f.density_params),
            prediction=PREDICTIONS.create(f.prediction, params=f.prediction_params),
            detail_noise=cfg.bridge.detail_noise,
            timestep_grid=TIMESTEP_GRIDS.create(s.timestep_grid, params=s.grid_params),
            mix=StageMix.from_config(f), caption_dropout=f.caption_dropout,
        )  # fmt: skip

    @property
    def num_stages(self) -> int:
        return self.schedule.num_stages

    @property
    def bridge_trains(self) -> bool:
        """Whether some tensor of the bridge requires a gradient (it is being trained)."""
        parameters = getattr(self.bridge, "parameters", None)
        return parameters is not None and any(p.requires_grad for p in parameters())

    def uniform(self) -> "PyramidFlow":
        """The same flow as one stage over the whole path (plain rectified flow; the uniform baseline)."""
        schedule = PyramidSchedule.uniform(self.schedule.num_train_timesteps)
        return replace(self, schedule=schedule, bridge=None, detail_noise=False, timestep_grid=LinearGrid(),
                       mix=StageMix((1.0,)))  # fmt: skip

    # ---- the network's output -------------------------------------------------------------------------
    def velocity(self, output: torch.Tensor, z: torch.Tensor, sigma_local: torch.Tensor, k: int) -> torch.Tensor:
        """Stage-k velocity from the network's output at z and local sigma' (B,)."""
        sigma = self.schedule.global_sigma(k, sigma_local)
        return self.prediction(output, z, sigma, self.schedule.width(k))

    def predicted_clean(self, z: torch.Tensor, v: torch.Tensor, sigma_local: float, k: int) -> torch.Tensor:
        """The clean latent a stage-k velocity points at: on z = sigma n + (1 - sigma) x the global velocity is
        n - x = v / width, so x0 = z - sigma v / width (global sigma; for x-prediction this is the output)."""
        sigma = self.schedule.global_sigma(k, sigma_local)
        return z - (sigma / self.schedule.width(k)) * v.to(z.dtype)

    # ---- training -------------------------------------------------------------------------------------
    def stage_latents(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Stage k's level of the data pyramid of full-resolution latents x."""
        return data_pyramid(x, self.num_stages)[k]

    def kept_captions(self, n: int, generator: torch.Generator) -> list[bool]:
        """Which of n captions survive caption dropout: each is dropped with probability `caption_dropout`
        (for CFG). Draws nothing when dropout is off."""
        if self.caption_dropout <= 0:
            return [True] * n
        return (torch.rand(n, generator=generator) >= self.caption_dropout).tolist()

    def drop_captions(self, captions: Sequence[str], generator: torch.Generator) -> list[str]:
        """The captions with the dropped ones (`kept_captions`) replaced by the empty prompt."""
        return [c if k else "" for c, k in zip(captions, self.kept_captions(len(captions), generator))]

    def training_losses(
        self, model_fn: ModelFn, latents: Sequence[tuple[int, torch.Tensor]], cond: Sequence[Any],
        generator: torch.Generator | None = None,
    ) -> StageLosses:  # fmt: skip
        """MSE between the network's velocity and start_k - end_k, per stage group.

        `latents` are (k, x_k) groups (x_k at stage k's size), `cond` the network conditioning of each group.
        From `generator`, each group draws its noise and then its sigma'.
        """
        out = StageLosses()
        for (k, x), c in zip(latents, cond, strict=True):
            sample = self.training_sample(x, k, generator)
            v = self.velocity(model_fn(sample.z, sample.model_time, k, c), sample.z, sample.sigma_local, k)
            out.stages.append(k)
            out.counts.append(x.shape[0])
            dtype = torch.promote_types(v.dtype, torch.float32)  # half outputs in float32; float64 stays float64
            out.losses.append(F.mse_loss(v.to(dtype), sample.target.to(dtype)))
        return out

    def training_sample(
        self, x_k: torch.Tensor, k: int, generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None, sigma_local: torch.Tensor | None = None,
    ) -> FlowSample:  # fmt: skip
        """Stage k's training example from data x_k at its size: start and end from one noise draw, sigma' from
        the density, z = sigma' start + (1 - sigma') end, target start - end, T = the stage window at sigma'.

        Draws (in this order, from `generator`) the noise and then sigma' unless they are given.
        """
        if noise is None:
            noise = torch.randn(x_k.shape, generator=generator, device=x_k.device, dtype=x_k.dtype)
        if sigma_local is None:
            sigma_local = self.density(x_k.shape[0], generator, x_k.device)
        # the bridge is frozen during flow training unless trainer.trainable selects some of its tensors: then the
        # loss reaches them through the start points
        with nullcontext() if self.bridge_trains else torch.no_grad():
            start, end = stage_endpoints(x_k, noise, k, self.schedule, self.bridge, self.detail_noise)
        return FlowSample.on_path(start, end, sigma_local, self.schedule.model_time(k, sigma_local))

    def bridge_pairs(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[tuple]:
        """BridgeFlow fitting pairs (u, y, k) for every transition, from full-resolution latents x and one
        full-resolution noise draw (its pyramid gives every level)."""
        n = torch.randn(x.shape, generator=generator, device=x.device)
        xs, ns = data_pyramid(x, self.num_stages), noise_pyramid(n, self.num_stages)
        return [(*bridge_pair(xs[k], ns[k], k, self.schedule), k) for k in range(1, self.num_stages)]

    # ---- sampling -------------------------------------------------------------------------------------
    def grid(self, k: int, steps: int) -> StageGrid:
        """The Euler grid of stage k for `steps` steps (the configured `timestep_grid`)."""
        return self.timestep_grid(self.schedule, k, steps)

    def transition(self, z: torch.Tensor, k: int, generators: Generators = None) -> torch.Tensor:
        """Start of stage k from the end of stage k-1: Bridge_k(Up(z)), plus fresh detail noise when on."""
        return bridge_jump(z, k, self.schedule, self.bridge, self.detail_noise, generators)

    def sample(
        self,
        model_fn: ModelFn,
        noise: torch.Tensor,
        cond: Any,
        steps: Sequence[int],
        guidance: float = 1.0,
        generators: Generators = None,
        keep_stages: bool = False,
    ) -> SampleTrace:
        """Progressive Euler sampling from stage-0 `noise`; before stage k > 0, z <- Bridge_k(Up(z)) (plus fresh
        detail noise from `generators` with detail noise on).

        With guidance w != 1 every step is one forward over the doubled batch [z; z], and `cond` must condition
        its first half on the prompts and its second half on the unconditional input:
        v = v_u + w (v_c - v_u). With w = 1, `cond` conditions z alone.
        """
        if len(steps) != self.num_stages:
            raise ValueError(f"need {self.num_stages} step counts, got {list(steps)}")
        trace = SampleTrace(final=noise)
        last: dict[str, torch.Tensor] = {}  # the current stage's latest clean-latent prediction

        def velocity(z: torch.Tensor, sigma_local: float, model_time: float, k: int) -> torch.Tensor:
            zz = z if guidance == 1.0 else torch.cat([z, z])
            t = torch.full((zz.shape[0],), model_time, device=z.device, dtype=torch.float32)
            s = torch.full((zz.shape[0],), sigma_local, device=z.device, dtype=torch.float32)
            v = self.velocity(model_fn(zz, t, k, cond), zz, s, k).float()
            if guidance != 1.0:
                v_cond, v_uncond = v.chunk(2)
                v = v_uncond + guidance * (v_cond - v_uncond)
            if keep_stages:  # the stage's last call leaves its prediction in `last`
                last["x0"] = self.predicted_clean(z, v, sigma_local, k)
            return v

        z = noise
        for k, n_steps in enumerate(steps):
            if k > 0:
                z = self.transition(z, k, generators)
            if keep_stages:
                trace.stage_starts.append(z)
            z = euler_stage(velocity, z, k, self.grid(k, n_steps))
            if keep_stages:
                trace.stage_ends.append(z)
                trace.stage_predictions.append(last["x0"])
        trace.final = z
        return trace

    def sampler_summary(self, steps: Sequence[int]) -> dict:
        """Per stage, the model times fed and the local sigmas walked for `steps` (`nami info`)."""
        grids = [self.grid(k, n) for k, n in enumerate(steps)]
        return {"timestep_grid": self.timestep_grid.kind, "sampler_model_times": [list(g.model_times) for g in grids],
                "sampler_sigmas": [list(g.sigmas) for g in grids]}  # fmt: skip
