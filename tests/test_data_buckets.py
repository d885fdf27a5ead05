"""Aspect-ratio buckets on the data side (data.buckets): mixed-aspect photos go to their nearest bucket cropped by
the least amount, every batch is one bucket, every sample exactly once over ranks x workers (partial buckets
flushed at the end of a one-pass stream, carried over epochs in training: none dropped), resume with pending
buckets replays the exact sequence (in process, and `nami train data.buckets=auto` after SIGKILL), DDP ranks step
together on unequal bucket counts, and precomputed shards store and read each sample at its bucket."""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules import ShardDataModule, ShardStream, StreamSpec, WorkerState, resolve_shards
from data_modules.check import check_data
from data_modules.decode import decode_image
from nami.config.buckets import bucket_table, stage_latent_shapes

from .data_fixtures import data_cfg, encode, flow_mix, write_tar
from .helpers import nami_command

FIXTURES_SCRIPT = Path(__file__).with_name("data_fixtures.py")  # run as a script: the DDP key-recording job

# (height, width) from 1:2 to 2:1 on the tiny config's 16 px grid, none above 64^2 pixels
TABLE = [(32, 64), (48, 64), (64, 64), (64, 48), (64, 32)]
BUCKETS = "data.buckets=[" + ",".join(f"[{h},{w}]" for h, w in TABLE) + "]"
RES = "resolution=64"
# (width, height) as displayed: 1:2 to 2:1, odd sides, one exactly on a bucket's ratio (128 x 64)
SIZES = [(37, 75), (75, 37), (61, 61), (101, 52), (52, 101), (90, 67), (67, 90), (45, 33), (33, 45),
         (128, 64), (64, 127), (79, 80), (55, 41), (41, 55), (150, 77)]  # fmt: skip


def photo(seed: int, width: int, height: int) -> Image.Image:
    """A photo-like image: a lit gradient, soft blobs of colour, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = rng.uniform(50, 200, 3) + (x[..., None] / width) * rng.uniform(-70, 70, 3)
    img = img + (y[..., None] / height) * rng.uniform(-70, 70, 3)
    for _ in range(4):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.1, 0.4) * min(width, height)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img = img + blob[..., None] * rng.uniform(-90, 90, 3)
    img = img + rng.normal(0, 5, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def photo_bytes(seed: int, width: int, height: int, kind: str) -> tuple[str, bytes]:
    """(extension, bytes) of a photo displayed at width x height: PNG, JPEG, or a JPEG stored a quarter turn
    away with EXIF orientation 6 (what phones write)."""
    img = photo(seed, width, height)
    if kind == "png":
        return "png", encode(img)
    if kind == "jpg":
        return "jpg", encode(img, "JPEG", quality=88)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise: store it turned the other way
    return "jpg", encode(img.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=88, exif=exif.tobytes())


def mixed_set(root: Path, shards: int = 5, per_shard: int = 13) -> dict[str, tuple[int, int]]:
    """Tars (and one parquet) of photos at SIZES cycled, PNG / JPEG / rotated JPEG, with two bad samples; returns
    {good key: displayed (height, width)}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sizes, kinds, n = {}, ("png", "jpg", "rotated"), 0
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            w, h = SIZES[n % len(SIZES)]
            ext, data = photo_bytes(n, w, h, kinds[n % 3])
            key = f"p{s}_{i:03d}"
            samples.append({"__key__": key, ext: data, "txt": f"photo {key}".encode()})
            sizes[key], n = (h, w), n + 1
        if s == 1:
            samples.insert(4, {"__key__": "bad_empty", "png": b"", "txt": b"x"})
            samples.insert(9, {"__key__": "bad_bytes", "jpg": b"\xff\xd8\xff\xe0 not a jpeg", "txt": b"x"})
        write_tar(root / f"m{s:03d}.tar", samples)
    rows = []
    for i in range(7):
        w, h = SIZES[(n + 3 * i) % len(SIZES)]
        rows.append({"key": f"row_{i}", "caption": f"row {i}", "image": photo_bytes(100 + i, w, h, "png")[1]})
        sizes[f"row_{i}"] = (h, w)
    pq.write_table(pa.Table.from_pylist(rows), root / "m999.parquet", row_group_size=2)
    return sizes


BAD_SKIPS = {"empty_image": 1, "undecodable": 1}


def bucket_cfg(root, *overrides):
    return data_cfg(str(root / "m*"), RES, BUCKETS, "data.batch_size=4", "data.num_workers=2", *overrides)


def expected_buckets(cfg, sizes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """{key: (height, width) of the bucket of TABLE nearest its displayed aspect ratio}, worked out here and not by
    the kit: the least |log(w / h) - log(bw / bh)|, with no ties among the test's sizes (so no tie rule matters)."""
    assert sorted(tuple(b.as_list()) for b in bucket_table(cfg)) == sorted(TABLE)
    out = {}
    for key, (h, w) in sizes.items():
        distances = sorted((abs(math.log(w / h) - math.log(bw / bh)), (bh, bw)) for bh, bw in TABLE)
        (best, bucket), (second, _) = distances[:2]
        assert second - best > 1e-6, (key, h, w)
        out[key] = bucket
    return out


def histogram(assignment: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Samples per bucket, "HxW", every bucket of TABLE (zeros included)."""
    counts = Counter(f"{h}x{w}" for h, w in assignment.values())
    return {f"{h}x{w}": counts.get(f"{h}x{w}", 0) for h, w in TABLE}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    return root, mixed_set(root)


# ---- one image ------------------------------------------------------------------------------------------
def test_each_image_goes_to_its_nearest_bucket_cropped_by_the_least_amount(tmp_path):
    cfg = bucket_cfg(tmp_path)
    table = tuple(bucket_table(cfg))
    # 2:1 exactly (the 32x64 bucket's ratio): red left edge, blue right edge, white between; nothing is cropped
    img = Image.new("RGB", (96, 48), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 6, 48))
    img.paste((0, 0, 255), (90, 0, 96, 48))
    x, crop = decode_image(encode(img), 64, None, buckets=table)
    assert x.shape == (3, 32, 64) and crop == (0.0, 0.0, 1.0, 1.0)
    assert x[0, 16, 0] > 0.9 and x[2, 16, 0] < -0.9 and x[2, 16, -1] > 0.9 and x[0, 16, -1] < -0.9
    square, _ = decode_image(encode(img), 64, None)  # the square crops both edges away
    assert square.shape == (3, 64, 64) and square[:, 32, 0].min() > 0.9 and square[:, 32, -1].min() > 0.9
    # 130 x 52 (5:2) goes to 32x64: the whole height and 104 px of the width (2:1) are kept, and random crops
    # only slide along the width
    wide = encode(photo(0, 130, 52))
    crops = [decode_image(wide, 64, random.Random(s), buckets=table) for s in range(8)]
    assert all(x.shape == (3, 32, 64) for x, _ in crops)
    assert all(top == 0.0 and bottom == 1.0 and round((right - left) * 130) == 104 for _, (left, top, right,
               bottom) in crops)  # fmt: skip
    assert len({left for _, (left, *_) in crops}) > 1
    # a phone JPEG stored landscape with EXIF orientation 6 is displayed portrait: a portrait bucket
    _, rotated = photo_bytes(1, 45, 90, "rotated")
    assert Image.open(io.BytesIO(rotated)).size == (90, 45)
    assert decode_image(rotated, 64, None, buckets=table)[0].shape == (3, 64, 32)


# ---- a pass over ranks x workers ------------------------------------------------------------------------
@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_mixed_aspect_pass_is_exactly_once_one_bucket_per_batch(mixed, tmp_path, ranks):
    root, sizes = mixed
    cfg = bucket_cfg(root)
    want = expected_buckets(cfg, sizes)
    keys_out = tmp_path / "keys.txt"
    report = check_data(cfg, world_size=ranks, keys_out=keys_out)  # DataLoader worker processes, as training
    assert sorted(keys_out.read_text().splitlines()) == sorted(want)  # every key once over ranks x workers
    assert report["duplicates"] == 0 and report["skipped"] == BAD_SKIPS
    assert report["buckets"] == histogram(want) and len([n for n in report["buckets"].values() if n]) == 5

    shards, seen = resolve_shards(cfg.data.shards), []
    for rank in range(ranks):
        spec = StreamSpec.from_config(cfg, shards, rank, ranks, train=False, flush=True)
        for worker in range(2):
            for batch in ShardStream(spec).batches(worker, 2, WorkerState()):
                keys = batch.all_keys()
                seen += keys
                assert all(want[k] == batch.size for k in keys)  # one bucket: each key's own
                assert tuple(batch.images[0].shape) == (len(keys), 3, *(batch.size or (64, 64)))
    assert sorted(seen) == sorted(want)


@pytest.mark.parametrize("ranks", [2, 3])
def test_training_batches_are_full_one_bucket_pooled_per_bucket_and_carry_nothing_away(mixed, ranks):
    """Endless epochs: every batch full and one bucket, groups at that bucket's stage shapes; over ranks x
    workers, the samples of epoch 0 batched so far plus those still pending are the data set exactly once."""
    root, sizes = mixed
    cfg = bucket_cfg(root, "data.shuffle_buffer=3")
    want, shards = expected_buckets(cfg, sizes), resolve_shards(cfg.data.shards)
    batched, pending_epoch0 = Counter(), 0
    for rank in range(ranks):
        spec = StreamSpec.from_config(cfg, shards, rank, ranks, mix=flow_mix(cfg))
        for worker in range(2):
            last = None
            for batch in ShardStream(spec).batches(worker, 2, WorkerState()):
                assert len(batch) == 4 and all(want[k] == batch.size for k in batch.all_keys())
                for k, x in zip(batch.stages, batch.images):
                    assert tuple(x.shape[-2:]) == stage_latent_shapes(cfg, *batch.size)[k]
                batched.update(k for keys, epochs in zip(batch.keys, batch.epochs)
                               for k, e in zip(keys, epochs) if e == 0)  # fmt: skip
                last = batch
                if batch.state["epoch"] >= 2:
                    break
            pending_epoch0 += sum(1 for a in last.state.get("pending", []) if a[0] == 0)
    assert max(batched.values()) == 1 and set(batched) <= set(want)
    assert sum(batched.values()) + pending_epoch0 == len(want)  # nothing dropped: batched or still waiting


def test_cli_check_reports_the_bucket_histogram(mixed, tmp_path):
    root, sizes = mixed
    cfg = bucket_cfg(root)
    out = subprocess.run(nami_command("data", "check", "experiments/tiny.yaml", "--json",
                                      "text_encoder.kind=learned", f"data.shards={root}/m*", RES, BUCKETS),
                         capture_output=True, text=True, cwd=Path(__file__).parents[1])  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["buckets"] == histogram(expected_buckets(cfg, sizes))


# ---- resume with pending buckets ------------------------------------------------------------------------
def _take(dm, n, prefetch=0):
    """Consume n batches the way Lightning does: fetch `prefetch` more than it trains on."""
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(n + prefetch)]
    for b in batches[:n]:
        dm.on_before_batch_transfer(b, 0)
    del it
    return batches[:n]


def _trace(batches):
    """Per batch: its bucket, (key, epoch) pairs and a digest of its pixels."""
    out = []
    for b in batches:
        pixels = hashlib.sha256(b"".join(x.numpy().tobytes() for x in b.images)).hexdigest()
        out.append((b.size, [(k, e) for ks, es in zip(b.keys, b.epochs) for k, e in zip(ks, es)], pixels))
    return out


@pytest.mark.parametrize("shuffle", [0, 3])
def test_resume_with_pending_buckets_replays_the_exact_sequence(mixed, shuffle):
    root, _ = mixed
    cfg = bucket_cfg(root, f"data.shuffle_buffer={shuffle}")
    total, stop, mix = 30, 9, flow_mix(cfg)  # 30 batches of 4: over two epochs of 72
    uninterrupted = ShardDataModule(cfg, mix=mix)
    full = _trace(_take(uninterrupted, total))
    first = ShardDataModule(cfg, mix=mix)
    head = _trace(_take(first, stop, prefetch=2))
    state = first.state_dict()
    pending = [len(w.get("pending", [])) for w in state["ranks"][0]["workers"].values()]
    assert sum(pending) > 0 and max(pending) <= 5 * 3  # saved: places of at most buckets x (batch_size - 1)
    assert len(json.dumps(state)) < 4000  # places, not pixels
    second = ShardDataModule(cfg, mix=mix)
    second.load_state_dict(torch.load(io.BytesIO(_saved(state)), weights_only=True))  # as a checkpoint holds it
    tail = _trace(_take(second, total - stop))
    assert head + tail == full  # same buckets, keys, epochs and pixels: nothing lost, nothing repeated
    assert second.skip_counts() == uninterrupted.skip_counts()  # counted once, not again for re-read samples
    assert len({size for size, *_ in full}) == 5


def _saved(state) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


# ---- precomputed shards ---------------------------------------------------------------------------------
def test_encode_stores_each_sample_at_its_bucket_and_training_reads_them_so(mixed, tmp_path, tiny_models):
    from data_modules.precomputed import payload_header
    from safetensors.torch import load as load_tensors

    from .test_precomputed import FlakyText, frozen_cfg, precomputed, stored_keys
    from data_modules.encode import encode_shards
    from nami.parts import build_encoders

    root, sizes = mixed
    cfg = frozen_cfg(tiny_models, f"{root}/m*", RES, BUCKETS, "data.batch_size=3", "data.num_workers=2")
    want = expected_buckets(cfg, sizes)
    out = tmp_path / "enc"
    text_encoder, autoencoder = build_encoders(cfg)
    with pytest.raises(RuntimeError, match="killed"):  # killed with partial buckets pending
        encode_shards(cfg, out, lambda: (FlakyText(text_encoder, die_at=9), autoencoder), shard_size=5)
    progress = json.loads((out / "encode-progress" / "rank00000.json").read_text())
    assert any(w.get("pending") for w in progress["workers"].values())
    report = encode_shards(cfg, out, lambda: (FlakyText(text_encoder), autoencoder), shard_size=5)
    assert sorted(stored_keys(out)) == sorted(want) and report["skipped"] == BAD_SKIPS  # once each
    for path in out.glob("*.tar"):
        with tarfile.open(path) as tar:
            for member in (m for m in tar if m.name.endswith(".safetensors")):
                data = tar.extractfile(member).read()
                header, latent = payload_header(data), load_tensors(data)["latent"]
                h, w = want[header["key"]]
                assert header["bucket"] == f"{h}x{w}" and latent.shape == (3, h, w)  # pixel space: the image

    pre = precomputed(cfg, out)
    assert check_data(pre)["buckets"] == histogram(want)  # a latent's shape says its bucket
    data = ShardDataModule(pre, mix=flow_mix(pre))
    for batch, _ in zip(data.train_dataloader(), range(6)):
        assert batch.latents and len(batch) == 3 and all(want[k] == batch.size for k in batch.all_keys())
        assert all(tuple(x.shape[1:]) == (3, *batch.size) for x in batch.images)  # full size: the module pools


def test_a_bucketed_step_from_encoded_shards_has_the_loss_of_online_encoding(tmp_path, tiny_models):
    """With the VAE (a 32 px grid): photos at the buckets' exact aspect ratios (so a random crop and a centred one
    are both the whole photo) encoded per bucket; the first training batch from the stored latents is the online
    one (same keys, same bucket) and its stage losses are those of encoding online."""
    from nami.lit import JointFlowModule
    from nami.parts import Parts, build_parts

    from .test_precomputed import encode as encode_shards, first_batch, frozen_cfg, precomputed

    sizes = [(128, 64), (128, 64), (80, 80), (64, 128), (128, 64), (64, 128), (80, 80), (64, 128), (80, 80)]
    write_tar(tmp_path / "exact.tar", [{"__key__": f"e{i}", "png": encode(photo(i, w, h)), "txt": f"photo {i}".encode()}
                                       for i, (w, h) in enumerate(sizes)])  # fmt: skip
    cfg = frozen_cfg(tiny_models, f"{tmp_path}/exact.tar", RES, "data.buckets=[[32,64],[64,64],[64,32]]",
                     "data.batch_size=3", vae=True)  # fmt: skip
    encode_shards(cfg, tmp_path / "enc")
    pre = precomputed(cfg, tmp_path / "enc")
    _, online_batch = first_batch(cfg)
    data, stored_batch = first_batch(pre)
    assert stored_batch.latents and not online_batch.latents
    assert sorted(stored_batch.all_keys()) == sorted(online_batch.all_keys()) == ["e0", "e1", "e4"]
    assert stored_batch.keys == online_batch.keys and stored_batch.size == online_batch.size == (32, 64)
    assert {tuple(x.shape[1:]) for x in stored_batch.images if len(x)} == {(4, 16, 32)}  # the bucket's latent

    torch.manual_seed(0)
    parts = build_parts(cfg, fitted=False)
    with torch.no_grad():  # off the zero-initialised heads
        for p in parts.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    online = JointFlowModule(cfg, parts)
    module = JointFlowModule(pre, Parts(parts.model, None, None, parts.bridge, parts.flow),
                             unconditional=data.unconditional())  # fmt: skip
    with torch.no_grad():
        want, got = online.stage_losses(online_batch), module.stage_losses(stored_batch)
    assert got.stages == want.stages and got.counts == want.counts
    assert abs(got.total.item() - want.total.item()) <= 1e-5, (got.losses, want.losses)


def test_shards_encoded_with_another_bucket_table_are_refused(mixed, tmp_path, tiny_models):
    from nami.config import ConfigError

    from .test_precomputed import encode, frozen_cfg, precomputed

    root, _ = mixed
    cfg = frozen_cfg(tiny_models, f"{root}/m00[01].tar", RES, BUCKETS)
    encode(cfg, tmp_path / "enc")
    square = frozen_cfg(tiny_models, f"{root}/m00[01].tar", RES)
    with pytest.raises(ConfigError, match=r"data\.buckets: is \[\[64, 64\]\] but .* encoded with \[\[64, 32\], "):
        ShardDataModule(precomputed(square, tmp_path / "enc")).shards


# ---- DDP: ranks never hang on unequal bucket counts -----------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ddp_with_buckets_steps_together_and_reads_each_key_once_per_epoch(mixed, tmp_path):
    import os
    import sys

    root, sizes = mixed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                     os.environ.get("PYTHONPATH")]))}  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, str(FIXTURES_SCRIPT), "ddp", f"{root}/m*", str(out), "20", RES, BUCKETS]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for seen in ranks:  # both ranks made every step (a gradient all-reduce each), each worker read on
        assert sorted({s for *_, s in seen}) == list(range(20))
    for epoch in (0, 1):
        keys = [key for seen in ranks for key, e, _, _ in seen if e == epoch]
        assert len(keys) == len(set(keys)) and set(keys) <= set(sizes)  # never twice in one epoch
    assert {key for seen in ranks for key, *_ in seen} == set(sizes)  # every sample trained on


# ---- the whole path: nami data synth --aspect-ratios, nami train data.buckets=auto, SIGKILL, resume ---------------
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.extended
def test_nami_train_with_auto_buckets_killed_mid_pass_resumes_the_exact_sequence(tmp_path):
    """`tiny` at 48 px with data.buckets=auto (32x64, 48x48, 64x32) on GenEval-Shapes at 1:2, 1:1 and 2:1: trains
    end to end; every step is one bucket; SIGKILLed after its step-3 checkpoint (mid-pass, with samples pending
    in their buckets), the resumed run trains on the uninterrupted run's keys step for step, logs its losses and
    ends on its weights."""
    from data_modules.synth import aspect_of

    from .test_lit_distributed import assert_same_run, kill_and_resume, train_args

    shapes = tmp_path / "shapes"
    synth = subprocess.run(nami_command("data", "synth", "--out", shapes, "--num", "240", "--shards", "4",
                                        "--resolution", "48", "--aspect-ratios", "1:2,1:1,2:1"),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert synth.returncode == 0, synth.stderr[-2000:]
    common = ["resolution=48", "data.buckets=auto", "data.num_workers=2", "trainer.max_steps=8",
              "trainer.checkpoint_every=3", "log.record_keys=true"]  # fmt: skip
    kill_and_resume(tmp_path, lambda name, *more: train_args(tmp_path, shapes, name, *more), *common)
    assert_same_run(tmp_path, 8)

    ratios = [0.5, 1.0, 2.0]  # width / height of the synth data, cycled per six samples (nami data synth)
    bucket = {0.5: (64, 32), 1.0: (48, 48), 2.0: (32, 64)}
    steps = [json.loads(line) for line in (tmp_path / "straight" / "keys-rank0.jsonl").read_text().splitlines()]
    sizes = [{bucket[aspect_of(int(k), ratios)] for k in s["keys"]} for s in steps]
    assert all(len(s) == 1 for s in sizes) and len(steps) == 8  # one bucket a step
    assert {size for s in sizes for size in s} == set(bucket.values())  # every bucket trained on
    saved = torch.load(tmp_path / "killed" / "checkpoints" / "step00000003.ckpt", weights_only=True)
    workers = saved["ShardDataModule"]["ranks"][0]["workers"].values()
    assert sum(len(w.get("pending", [])) for w in workers) > 0  # killed with samples waiting for their bucket
