"""Streaming data for the NAMI kit: shards -> decoded samples -> per-stage batches (DESIGN section 5).

Pipeline: `formats/` (one module per `data.format`, a registry: resolve data.shards to shards, read a shard's
raw records; `sources` expands file patterns; `formats/tar` is the bounded tar reader, `formats/rows` turns
Arrow rows into records) -> `split` (who reads what across rank x worker) -> `decode` (one decoder per
stream: images to RGB, resize, crop, [-1, 1], or `precomputed`'s stored latents and text embeddings;
`metadata` reads captions and json; skips by reason) -> `stream` (the per-worker iterable: epochs, shuffle,
resume state, batching) -> `collate` (StageBatch). `records` holds what passes between them (a leaf);
`inputs` checks a config's data before any compute (`precomputed_dir`: a directory of precomputed shards and
its description files). `datamodule` wraps it for Lightning; `check`, `bench`, `synth` and `encode` back the
CLI (`synth` renders `nami.eval.shapes`, the GenEval-Shapes vocabulary shared with the evaluator; `encode`
writes the precomputed shards `precomputed` reads, with `progress` lines on stderr).

Hostile data: one sample costs one counted skip, never the run. Readers refuse a record above
data.max_member_bytes before reading it; every exception a decoder raises on the bytes it was handed is a
skip (`decode.decode_record`); pixels, captions and json have their own bounds (`decode`, `metadata`); a
damaged description of a shard set is one ConfigError line naming the file.

The batch contract (what the training module consumes): every training batch is a `StageBatch` with K
groups, one per stage, of static sizes within a ratio phase (largest-remainder split of data.batch_size by
the flow's `StageMix.ratios_at(step)`, handed in as `ShardDataModule(cfg, mix=parts.flow.mix)`). A batch
says what it holds, so the module dispatches on it, never on the config:

    images[k]    pixels: (n_k, 3, s, s) float32 in [-1, 1]; with `latents`: model-space latents (n_k, C, h, w)
    pooled       True: images[k] is already at stage k's side, cfg.stage_latent_sizes()[k] (pooled in the
                 workers with nami.flow.data_pyramid: pixels of the pixel autoencoder). False: full size
                 (s = cfg.resolution for pixels); the module encodes if needed, then pools to stage k itself.
                 A stage with ratio 0 has an empty group (n_k = 0); skip it.
    latents      True with data.precomputed (shards of `nami data encode`): images are the stored full-size
                 latents, not pixels, and are not encoded again (pooled is then False).
    text         None: the module encodes the captions. With data.precomputed, text[k] is the stored
                 `nami.text_embedding.TextEmbedding` of group k (states (n_k, L, D), mask (n_k, L) bool,
                 pooled (n_k, P)); the empty prompt's, for caption dropout: `ShardDataModule.unconditional()`.
    captions[k]  list[str], as written (caption dropout for CFG is the training module's job)
    keys[k]      list[str], the sample keys
    metadata[k]  list, the sample's json (tars) or its row without the image (parquet, hf), unmodified
    epochs[k]    list[int], the epoch each sample was read in
    stages       [0, .., K-1]: stage id of each group ([K-1] alone for evaluation batches)
    step         the optimizer step the batch was built for; ratios are those in force at it
    ratios       the stage ratios in force at `step`
    state        the producing worker's position and cumulative skip counts (internal; for resume)

The step reaches the workers without any message: loader batch b comes from worker b % W and is that
worker's (b // W)-th batch, so a worker computes step = (i * W + w) // batches_per_step from its own count i
(kept in the resume state). Skip counts by reason: `ShardDataModule.skip_counts()` (this rank, cumulative,
restored on resume) for logging; `nami data check` returns them for a whole pass.

The training loader never ends (epochs repeat; training stops at trainer.max_steps), which is what keeps
ranks with unequal sample counts from hanging; `split.py` and `stream.py` say how shards are shared and how
resume stays exact. `ShardDataModule(cfg, joint=False)` gives full-resolution batches (bridge fitting; no mix).
"""

from importlib import import_module

# Exports load on first use: `nami data synth` or a DataLoader worker need not import Lightning.
_EXPORTS = {
    "BatchPlan": "collate",
    "StageBatch": "collate",
    "make_batch": "collate",
    "stage_counts": "collate",
    "ShardDataModule": "datamodule",
    "DecodeOptions": "decode",
    "ImageDecoder": "decode",
    "FileFormat": "formats",
    "Format": "formats",
    "format_of": "formats",
    "read_records": "formats",
    "register_format": "formats",
    "resolve_data": "formats",
    "resolve_shards": "formats",
    "checked_shards": "inputs",
    "decoder_for": "inputs",
    "usable_shards": "inputs",
    "PayloadLayout": "precomputed",
    "PrecomputedDecoder": "precomputed",
    "ReadOptions": "records",
    "REPAIR_REASONS": "records",
    "SKIP_REASONS": "records",
    "Failure": "records",
    "Record": "records",
    "Sample": "records",
    "Shard": "records",
    "Skip": "records",
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
