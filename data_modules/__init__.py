"""Streaming data for the NAMI kit: shards -> decoded samples -> per-stage batches (DESIGN section 5).

Pipeline: `sources` (resolve data.shards) -> `split` (who reads what across rank x worker) -> `records`
(raw tar / parquet records; `hf` reads Hugging Face `datasets`, data.format: hf) -> `decode` (RGB, resize,
crop, [-1, 1]; skips by reason) -> `stream` (the per-worker iterable: epochs, shuffle, resume state,
batching) -> `collate` (StageBatch). `datamodule` wraps it for Lightning; `check`, `bench`, `synth` and
`encode` back the CLI (`synth` renders `nami.eval.shapes`, the GenEval-Shapes vocabulary shared with the
evaluator; `encode` writes precomputed latents and text embeddings in the format of `encoded`).

The batch contract (what the training module consumes): every training batch is a `StageBatch` with K
groups, one per stage, of static sizes within a ratio phase (largest-remainder split of data.batch_size by
`nami.flow.StageMix.ratios_at(step)`):

    images[k]    (n_k, 3, s, s) float32 in [-1, 1]. With autoencoder.kind == "pixel" (`pooled` True) s is
                 stage k's side, cfg.stage_latent_sizes()[k], already pooled with nami.flow.data_pyramid;
                 otherwise s = cfg.resolution and the module encodes, then pools to stage k itself.
                 A stage with ratio 0 has an empty group (n_k = 0); skip it.
    captions[k]  list[str], as written (caption dropout for CFG is the training module's job)
    keys[k]      list[str], the sample keys
    metadata[k]  list, the sample's json (tars) or its row without the image (parquet), unmodified
    epochs[k]    list[int], the epoch each sample was read in
    stages       [0, .., K-1]: stage id of each group ([K-1] alone for evaluation batches)
    step         the optimizer step the batch was built for; ratios are those in force at it
    ratios       the stage ratios in force at `step`
    pooled       see images
    text         None, or with data.precomputed (shards of `nami data encode`, `encoded.py`) the stored text
                 embedding of each group, {"states", "mask", "pooled"}; images[k] then holds the stored
                 full-size latents (pooled False: the training module builds their pyramid)
    state        the producing worker's position and cumulative skip counts (internal; for resume)

The step reaches the workers without any message: loader batch b comes from worker b % W and is that
worker's (b // W)-th batch, so a worker computes step = (i * W + w) // batches_per_step from its own count i
(kept in the resume state). Skip counts by reason: `ShardDataModule.skip_counts()` (this rank, cumulative,
restored on resume) for logging; `nami data check` returns them for a whole pass.

The training loader never ends (epochs repeat; training stops at trainer.max_steps), which is what keeps
ranks with unequal sample counts from hanging; `split.py` and `stream.py` say how shards are shared and how
resume stays exact. `ShardDataModule(cfg, joint=False)` gives full-resolution batches (bridge fitting).
"""

from importlib import import_module

# Exports load on first use: `nami data synth` or a DataLoader worker need not import Lightning.
_EXPORTS = {
    "BatchPlan": "collate",
    "StageBatch": "collate",
    "make_batch": "collate",
    "stage_counts": "collate",
    "ShardDataModule": "datamodule",
    "REPAIR_REASONS": "decode",
    "SKIP_REASONS": "decode",
    "DecodeOptions": "decode",
    "Sample": "decode",
    "Skip": "decode",
    "Shard": "sources",
    "resolve_data": "sources",
    "resolve_shards": "sources",
    "Piece": "split",
    "split_pieces": "split",
    "worker_pieces": "split",
    "ShardStream": "stream",
    "StreamSpec": "stream",
    "WorkerState": "stream",
    "make_loader": "stream",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
