"""`BridgePretrainModule`: fit every BridgeFlow transition by MSE (DESIGN section 3, BridgeFlow pretraining).

The training stream supplies full-resolution images. The first `fit` batches fit the bridge (closed form:
accumulate moments, all-reduce, one solve; SGD: one AdamW step per batch); the next `heldout` batches,
unseen by the fit, score the fitted bridge, the identity bridge and Pyramid Flow's renoise jump. The fitting
itself is `nami.bridges.fit`; this module only routes batches.
"""

from __future__ import annotations

import lightning as L
import torch

from ..bridges import BridgeFlow, ClosedFormFit, pairs_loss, squared_errors
from ..config import ConfigError, NamiConfig, config_from_dict, to_dict
from ..parts import Parts, build_parts
from ..flow.seeds import step_generator

REFERENCES = ("identity", "renoise")


class BridgePretrainModule(L.LightningModule):
    """Fits `bridge.kind`; `report()` gives held-out MSE per transition for it and the references."""

    def __init__(self, config: NamiConfig | dict, parts: Parts | None = None):
        super().__init__()
        cfg = config if isinstance(config, NamiConfig) else config_from_dict(config)
        self.cfg = cfg
        self.save_hyperparameters({"config": to_dict(cfg)})
        parts = parts if parts is not None else build_parts(cfg, fitted=False, networks=False,
                                                            encoders=not cfg.data.precomputed)  # fmt: skip
        self.bridge: BridgeFlow = parts.bridge
        if not self.bridge.learnable:
            raise ConfigError("bridge.kind", f"{cfg.bridge.kind} has nothing to fit; train with it directly")
        self.autoencoder, self.flow = parts.autoencoder, parts.flow
        b = cfg.bridge
        self.closed_form = b.solver == "closed_form"
        self.fit_batches = b.fit_batches if self.closed_form else b.sgd_steps
        self.references = {kind: self.bridge.with_kind(kind) for kind in REFERENCES}
        self.automatic_optimization = False
        self.fit = ClosedFormFit(self.bridge) if self.closed_form else None
        transitions = self.flow.num_stages - 1
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
        """(u, y, k) for every transition from each full-resolution image (or stored latent: `batch.latents`,
        data.precomputed) and one noise draw."""
        gen = step_generator(self.cfg.seed, self.global_rank, batch_idx, self.device)
        x = torch.cat(batch.images)
        latents = x if batch.latents else self.autoencoder.encode(x)
        return self.flow.bridge_pairs(latents.float(), gen)

    def training_step(self, batch, batch_idx):
        pairs = self.pairs(batch, batch_idx)
        if batch_idx >= self.fit_batches:
            self._score(pairs, batch_idx)
        elif self.closed_form:
            self.fit.add(pairs)
            if batch_idx == self.fit_batches - 1:
                self.fit.solve(self.cfg.bridge.ridge)
        else:
            optimizer = self.optimizers()
            loss = pairs_loss(self.bridge, pairs)
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            optimizer.step()
            self.log("bridge/train_mse", loss, prog_bar=True)

    def _score(self, pairs, batch_idx: int) -> None:
        gen = step_generator(self.cfg.seed + 1, self.global_rank, batch_idx)  # renoise's block noise
        for row, bridge in enumerate([self.bridge, *self.references.values()]):
            for k, (sse, count) in squared_errors(bridge, pairs, gen).items():
                self.heldout_sse[row, k - 1] += sse.to(self.heldout_sse.device)
                if row == 0:
                    self.heldout_count[k - 1] += count

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
