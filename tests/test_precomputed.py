"""Precomputed latents and text embeddings (`nami data encode`, data.precomputed): a training step from the
shards has the loss of the same step with online encoding; the encode reads every sample once across ranks,
counts what it skips, resumes after a crash without touching finished shards; mismatched configs are refused."""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
from collections import Counter
from dataclasses import replace

import pytest
import torch

from nami.config import ConfigError, load
from nami.models import TextEmbedding
from nami.parts import Parts, build_encoders, build_parts

from .data_fixtures import BAD_SET_OPTIONS, BAD_SET_REPAIRS, BAD_SET_SKIPS, bad_set, simple_shards
from .helpers import EXPERIMENTS, LEARNED_TEXT, nami_command

pytestmark = pytest.mark.xdist_group("precomputed")  # one worker builds the module's models and shards once

TINY = EXPERIMENTS / "tiny.yaml"
VAE = ["autoencoder.kind=diffusers_kl", "autoencoder.channels=4", "autoencoder.downsample=2"]


def frozen_cfg(models, shards, *overrides, vae: bool = False):
    """tiny.yaml with a frozen pretrained-shaped text encoder (T5 states + CLIP pooled), fp32 on the CPU, read in
    order (no shuffle, no workers), half the captions dropped for guidance."""
    return load(TINY, [
        "text_encoder.kind=hf", f"text_encoder.path={models / 't5'}", f"text_encoder.pooled_path={models / 'clip'}",
        "text_encoder.dim=32", "text_encoder.pooled_dim=24", "text_encoder.max_length=8", "text_encoder.cache_size=0",
        *([*VAE, f"autoencoder.path={models / 'vae'}"] if vae else []),
        f"data.shards={shards}", "data.batch_size=6", "data.num_workers=0", "data.shuffle_buffer=0",
        "trainer.accelerator=cpu", "trainer.precision=32-true", "flow.caption_dropout=0.5", *overrides,
    ])  # fmt: skip


def precomputed(cfg, out):
    """The same config reading the encoded shards in `out`."""
    return replace(cfg, data=replace(cfg.data, shards=f"{out}/*.tar", precomputed=True))


def encode(cfg, out, **kw):
    from data_modules.encode import encode_shards

    return encode_shards(cfg, out, lambda: build_encoders(cfg), **kw)


def first_batch(cfg):
    from data_modules import ShardDataModule

    data = ShardDataModule(cfg, mix=parts_flow(cfg).mix)
    return data, next(iter(data.train_dataloader()))


def stored_keys(out) -> list[str]:
    """The source keys of every record in the encoded shards, in file order."""
    from data_modules.precomputed import payload_header

    keys = []
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            keys += [payload_header(tar.extractfile(m).read())["key"] for m in tar if m.name.endswith(".safetensors")]
    return keys


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from data_modules.synth import write_shapes

    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, num=24, shards=2, resolution=32, seed=0)  # square, full size: every crop is the image
    return root


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, tiny_models, shapes):
    cfg = frozen_cfg(tiny_models, f"{shapes}/*.tar")
    out = tmp_path_factory.mktemp("encoded")
    encode(cfg, out)
    return cfg, out


@pytest.mark.parametrize("vae", [False, True], ids=["pixel", "vae"])
def test_a_step_from_precomputed_shards_has_the_loss_of_online_encoding(tmp_path, tiny_models, shapes,
                                                                         vae):  # fmt: skip
    from nami.lit import JointFlowModule
    from nami.flow.seeds import step_generator

    cfg = frozen_cfg(tiny_models, f"{shapes}/*.tar", vae=vae)
    encode(cfg, tmp_path / "enc")
    pre = precomputed(cfg, tmp_path / "enc")
    _, online_batch = first_batch(cfg)
    data, stored_batch = first_batch(pre)
    assert stored_batch.text is not None and online_batch.text is None
    assert stored_batch.latents and not online_batch.latents and not stored_batch.pooled  # the batch says what it holds
    assert all(isinstance(t, TextEmbedding) for t in stored_batch.text)
    assert isinstance(data.unconditional(), TextEmbedding) and data.unconditional().states.shape[0] == 1
    assert stored_batch.keys == online_batch.keys  # the same samples in the same stage groups
    gen = step_generator(cfg.seed, 0, 0)
    dropped = [c == "" for g in online_batch.captions if g for c in parts_flow(cfg).drop_captions(g, gen)]
    assert any(dropped) and not all(dropped)  # both the stored and the unconditional embeddings are used

    torch.manual_seed(0)
    parts = build_parts(cfg, fitted=False)
    with torch.no_grad():  # off the zero-initialised heads: the output then depends on the text, as trained
        for p in parts.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    online = JointFlowModule(cfg, parts)
    bare = Parts(parts.model, None, None, parts.bridge, parts.flow)  # the same weights, no encoder
    module = JointFlowModule(pre, bare, unconditional=data.unconditional())
    with torch.no_grad():
        want, got = online.stage_losses(online_batch), module.stage_losses(stored_batch)
    assert got.stages == want.stages and got.counts == want.counts
    for a, b in zip(got.losses, want.losses):
        assert abs(a.item() - b.item()) <= 1e-5, (got.losses, want.losses)
    assert abs(got.total.item() - want.total.item()) <= 1e-5

    u = module.unconditional  # the stored empty-prompt embedding is what makes the dropped rows agree
    module.unconditional = TextEmbedding(torch.zeros_like(u.states), u.mask, torch.zeros_like(u.pooled))
    with torch.no_grad():
        assert abs(module.stage_losses(stored_batch).total.item() - want.total.item()) > 1e-4


def parts_flow(cfg):
    return build_parts(cfg, fitted=False, networks=False, encoders=False).flow


def test_training_from_precomputed_shards_builds_no_encoder(encoded, monkeypatch):
    import nami.parts
    from nami.lit import JointFlowModule

    cfg, out = encoded
    pre = precomputed(cfg, out)

    def refuse(*_):
        raise AssertionError("an encoder was built")

    monkeypatch.setattr(nami.parts, "build_text_encoder", refuse)
    monkeypatch.setattr(nami.parts, "build_autoencoder", refuse)
    module = JointFlowModule(pre)  # as load_from_checkpoint builds it: from the config alone
    assert getattr(module, "text_encoder", None) is None and getattr(module, "autoencoder", None) is None
    monkeypatch.undo()
    text_encoder, _ = module.encoders()  # sampling still encodes prompts live: built on first use
    assert text_encoder.dim == 32 and module.pipeline().text_encoder is text_encoder


def test_bridge_fitting_pairs_from_precomputed_shards_equal_online(tmp_path, tiny_models, shapes):
    from data_modules import ShardDataModule
    from nami.lit.bridge_pretrain import BridgePretrainModule

    cfg = frozen_cfg(tiny_models, f"{shapes}/*.tar", vae=True)
    encode(cfg, tmp_path)
    pre = precomputed(cfg, tmp_path)
    batches = [next(iter(ShardDataModule(c, joint=False).train_dataloader())) for c in (cfg, pre)]
    assert batches[0].keys == batches[1].keys
    assert batches[1].latents and not batches[0].latents
    online = BridgePretrainModule(cfg, build_parts(cfg, fitted=False, networks=False))
    stored = BridgePretrainModule(pre)  # no autoencoder: the pairs come from the stored latents
    assert stored.autoencoder is None
    for (u, y, k), (u2, y2, k2) in zip(online.pairs(batches[0], 0), stored.pairs(batches[1], 0), strict=True):
        assert k == k2 and torch.allclose(u, u2, atol=1e-5) and torch.allclose(y, y2, atol=1e-5)


def test_encode_reads_every_sample_once_across_ranks_and_counts_skips(tmp_path, tiny_models, capsys, monkeypatch):
    import data_modules.progress
    from data_modules.check import check_data

    paths, expected = bad_set(tmp_path)
    keys = simple_shards(tmp_path, [5, 3], prefix="good")
    cfg = frozen_cfg(tiny_models, [str(p) for p in paths] + [str(tmp_path / "good*.tar")], *BAD_SET_OPTIONS,
                     "data.num_workers=2", "data.batch_size=4")  # fmt: skip
    out = tmp_path / "enc"
    monkeypatch.setattr(data_modules.progress, "PLAIN_INTERVAL_S", 0.0)  # off a TTY: a line after every batch
    reports = [encode(cfg, out, rank=r, world_size=2, shard_size=3) for r in range(2)]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("encode rank 1: ")]
    samples, skipped = reports[1]["samples"], sum(reports[1]["skipped"].values())
    assert lines[-1].startswith(f"encode rank 1: {samples} samples, ") and f", {skipped} skipped (" in lines[-1]
    assert sorted(stored_keys(out)) == sorted([*expected, *keys])  # each good sample once, nothing else
    skipped = sum((Counter(r["skipped"]) for r in reports), Counter())
    assert +skipped == BAD_SET_SKIPS  # the training reader's reasons and counts
    assert +sum((Counter(r["repaired"]) for r in reports), Counter()) == BAD_SET_REPAIRS
    source = check_data(cfg, world_size=2)  # the same split as training: per-rank counts agree
    assert [r["samples"] for r in reports] == [r["samples"] for r in source["per_rank"]]

    from data_modules import ShardDataModule

    data = ShardDataModule(precomputed(cfg, out))
    spec_batches = data.eval_dataloader(0, 1)
    metadata = {k: m for b in spec_batches for k, m in zip(b.all_keys(), b.metadata[0])}
    assert metadata == {**expected, **{k: {} for k in keys}}  # the source metadata, as written


class FlakyText:
    """A text encoder that dies on its n-th call (a killed encode), counting the captions it encoded."""

    def __init__(self, inner, die_at: int | None = None):
        self.inner, self.die_at, self.calls, self.captions = inner, die_at, 0, 0
        self.trainable = False

    def __call__(self, prompts):
        self.calls += 1
        if self.calls == self.die_at:
            raise RuntimeError("killed")
        self.captions += len(prompts)
        return self.inner(prompts)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_killed_encode_resumes_after_its_last_finished_shard(tmp_path, tiny_models, workers):
    from data_modules.encode import encode_shards

    keys = simple_shards(tmp_path, [7, 5, 6])
    cfg = frozen_cfg(tiny_models, f"{tmp_path}/s*.tar", "data.batch_size=2", f"data.num_workers={workers}")
    out = tmp_path / "enc"
    text_encoder, autoencoder = build_encoders(cfg)
    flaky = FlakyText(text_encoder, die_at=6)  # the empty prompt, then 4 batches: shards of 4 finish after 2
    with pytest.raises(RuntimeError, match="killed"):
        encode_shards(cfg, out, lambda: (flaky, autoencoder), shard_size=4)
    finished = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.tar")}
    assert list(finished) == ["00000_000000.tar", "00000_000001.tar"]

    stray = out / "00000_000002.tar"  # a file the progress does not account for is never overwritten
    stray.write_bytes(b"someone else's")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        encode_shards(cfg, out, lambda: (FlakyText(text_encoder), autoencoder), shard_size=4)
    stray.unlink()

    again = FlakyText(text_encoder)
    report = encode_shards(cfg, out, lambda: (again, autoencoder), shard_size=4)
    assert report["samples"] == len(keys) and report["encoded_now"] == len(keys) - 8
    assert again.captions == len(keys) - 8  # the unfinished shard's samples again, nothing before
    assert sorted(stored_keys(out)) == sorted(keys)  # every sample exactly once
    assert {n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in finished} == finished

    done = encode_shards(cfg, out, lambda: pytest.fail("a finished encode builds no encoder"), shard_size=4)
    assert done["encoded_now"] == 0 and done["samples"] == len(keys)


def test_training_refuses_shards_encoded_with_another_config(encoded):
    from data_modules import ShardDataModule

    cfg, out = encoded
    ShardDataModule(precomputed(cfg, out)).setup()  # the config they were encoded with: accepted
    other = precomputed(cfg, out)
    other = replace(other, text_encoder=replace(other.text_encoder, max_length=6))
    with pytest.raises(ConfigError) as err:
        ShardDataModule(other).setup()
    assert err.value.key == "text_encoder.max_length" and "encoded with 8" in str(err.value)


def test_cli_refuses_a_mismatch_in_one_line(encoded):
    cfg, out = encoded
    t = cfg.text_encoder
    result = subprocess.run(nami_command(
        "data", "check", TINY, "text_encoder.kind=hf", f"text_encoder.path={t.path}",
        f"text_encoder.pooled_path={t.pooled_path}", "text_encoder.dim=32", "text_encoder.pooled_dim=24",
        "text_encoder.max_length=8", f"data.shards={out}/*.tar", "data.precomputed=true", "resolution=64",
    ), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nami: error: resolution: is 64"), result.stderr


def test_shards_that_are_not_encoded_or_not_finished_are_refused(encoded, shapes, tmp_path):
    from data_modules import ShardDataModule

    cfg, out = encoded
    with pytest.raises(ConfigError, match="nami-encode.json"):
        ShardDataModule(precomputed(cfg, shapes)).setup()  # raw image shards
    from data_modules.encode import encode_shards

    text_encoder, autoencoder = build_encoders(cfg)
    with pytest.raises(RuntimeError):  # rank 0 of 2 dies after its first shard (rank 1 never ran)
        encode_shards(cfg, tmp_path, lambda: (FlakyText(text_encoder, die_at=3), autoencoder), world_size=2,
                      shard_size=1)  # fmt: skip
    with pytest.raises(ConfigError, match="not finished"):
        ShardDataModule(precomputed(cfg, tmp_path)).setup()


def test_a_trainable_text_encoder_cannot_train_from_precomputed_shards():
    with pytest.raises(ConfigError) as err:
        load(TINY, [*LEARNED_TEXT, "data.precomputed=true"])
    assert err.value.key == "text_encoder.kind"


def test_bench_training_times_online_and_precomputed_in_one_run(tiny_models):
    from nami.perf.bench import bench_training, format_training

    cfg = frozen_cfg(tiny_models, "unused/*.tar", "data.batch_size=3", "model.width=48", "model.heads=2")
    report = bench_training(cfg, repeats=1, compare_data=True)
    assert report["data"] == "online" and report["joint_step_s"] == report["online_step_s"] > 0
    assert report["precomputed_ratio"] == pytest.approx(report["precomputed_step_s"] / report["online_step_s"])
    assert "precomputed" in format_training(report)
    # the model FLOP rate of the step: 3x the FLOP model's forward (forward + backward) over the measured time
    from nami.models import forward_cost

    forward = sum(n * forward_cost(cfg, k).total for n, k in zip(report["stage_counts"], range(cfg.num_stages)))
    assert report["joint_rate"]["tflops"] == pytest.approx(3 * forward / report["joint_step_s"] / 1e12)
    assert report["joint_rate"]["peak_fraction"] is None and "TFLOP/s" in format_training(report)
    stored = bench_training(precomputed(cfg, "unused"), repeats=1)  # the configured path alone
    assert stored["data"] == "precomputed" and stored["online_step_s"] is None and stored["precomputed_step_s"] > 0
