"""`BridgePretrainModule`: fit every BridgeFlow transition by MSE (DESIGN section 3, BridgeFlow pretraining).

The training stream supplies full-resolution images. The first `fit` batches fit the bridge (closed form:
accumulate moments, all-reduce, one solve; SGD: one AdamW step per batch); the next `heldout` batches,
unseen by the fit, score the fitted bridge, the identity bridge and Pyramid Flow's renoise jump.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from ..bridges import BridgeFlow, all_reduce_moments, bridge_from_config, build_bridge
from ..config import ConfigError, NamiConfig, to_dict
from ..flow import PyramidSchedule, bridge_pair, data_pyramid, noise_pyramid
from ..models import build_autoencoder
from .batches import step_generator

REFERENCES = ("identity", "renoise")


class BridgePretrainModule(L.LightningModule):
    """Fits `bridge.kind`; `report()` gives held-out MSE per transition for it and the references."""

    def __init__(self, cfg: NamiConfig):
        super().__init__()
        self.cfg = cfg
        self.save_hyperparameters({"config": to_dict(cfg)})
        self.bridge: BridgeFlow = bridge_from_config(cfg)
        if not self.bridge.learnable:
            raise ConfigError("bridge.kind", f"{cfg.bridge.kind} has nothing to fit; train with it directly")
        self.closed_form = cfg.bridge.solver == "closed_form"
        self.fit_batches = cfg.bridge.fit_batches if self.closed_form else cfg.bridge.sgd_steps
        self.schedule = PyramidSchedule.from_config(cfg.flow)
        self.autoencoder = build_autoencoder(cfg.autoencoder)
        self.references = {kind: build_bridge(kind, self.schedule, self.bridge.channels, self.bridge.stage_sizes)
                           for kind in REFERENCES}  # fmt: skip
        self.automatic_optimization = False
        self.moments = self.bridge.new_moments() if self.closed_form else None
        transitions = self.schedule.num_stages - 1
        # held-out squared-error sums per (bridge, transition) and element counts per transition
        self.register_buffer("heldout_sse", torch.zeros(1 + len(REFERENCES), transitions, dtype=torch.float64))
        self.register_buffer("heldout_count", torch.zeros(transitions, dtype=torch.float64))

    @property
    def total_batches(self) -> int:
        return self.fit_batches + self.cfg.bridge.heldout_batches

    def configure_optimizers(self):
        if self.closed_form:
            return None
        return torch.optim.AdamW(self.bridge.parameters(), lr=self.cfg.bridge.lr, weight_decay=0.0)

    def pairs(self, batch, batch_idx: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """(u, y, k) for every transition k from each full-resolution image and one noise draw."""
        gen = step_generator(self.cfg.seed, self.global_rank, batch_idx, self.device)
        x = self.autoencoder.encode(torch.cat(batch.images)).float()
        n = torch.randn(x.shape, generator=gen, device=x.device)
        k_stages = self.schedule.num_stages
        xs, ns = data_pyramid(x, k_stages), noise_pyramid(n, k_stages)
        return [(*bridge_pair(xs[k], ns[k], k, self.schedule), k) for k in range(1, k_stages)]

    def training_step(self, batch, batch_idx):
        pairs = self.pairs(batch, batch_idx)
        if batch_idx < self.fit_batches:
            self._fit(pairs, batch_idx)
        else:
            self._score(pairs, batch_idx)

    def _fit(self, pairs, batch_idx: int) -> None:
        if self.closed_form:
            with torch.no_grad():
                for u, y, k in pairs:
                    self.bridge.accumulate(self.moments, u, y, k)
            if batch_idx == self.fit_batches - 1:
                all_reduce_moments(self.moments)
                self.bridge.solve(self.moments, self.cfg.bridge.ridge)
            return
        optimizer = self.optimizers()
        loss = sum(F.mse_loss(self.bridge(u, k), y) for u, y, k in pairs) / len(pairs)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()
        self.log("bridge/train_mse", loss, prog_bar=True)

    @torch.no_grad()
    def _score(self, pairs, batch_idx: int) -> None:
        gen = step_generator(self.cfg.seed + 1, self.global_rank, batch_idx)  # renoise's block noise
        bridges = [self.bridge, *self.references.values()]
        for u, y, k in pairs:
            for row, bridge in enumerate(bridges):
                out = bridge(u, k, generator=gen).float()
                self.heldout_sse[row, k - 1] += F.mse_loss(out, y.float(), reduction="sum").double()
            self.heldout_count[k - 1] += y.numel()

    def report(self) -> dict:
        """Held-out MSE per transition (summed over ranks): the fitted kind, identity and renoise."""
        sse = self.trainer.strategy.reduce(self.heldout_sse.clone(), reduce_op="sum")
        count = self.trainer.strategy.reduce(self.heldout_count.clone(), reduce_op="sum").clamp(min=1)
        names = [self.cfg.bridge.kind, *REFERENCES]
        mse = {name: {f"transition_{k + 1}": (sse[row, k] / count[k]).item() for k in range(sse.shape[1])}
               for row, name in enumerate(names)}  # fmt: skip
        return {
            "kind": self.cfg.bridge.kind,
            "solver": self.cfg.bridge.solver,
            "fit_batches": self.fit_batches,
            "heldout_batches": self.cfg.bridge.heldout_batches,
            "heldout_mse": mse,
        }
