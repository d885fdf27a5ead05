"""Files and settings from outside refused before anything is allocated, and faults that lose nothing silently
(issue 23, items 6-9, 12, 15, 16; item 14, stop signals: test_signals.py). Memory-bound cases run under an
address-space limit in a subprocess."""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from nami.config import load

from .helpers import EXPERIMENTS, REPO, nami_command, train_tiny_run
from .safety_fixtures import cli, one_error_line

TINY = EXPERIMENTS / "tiny.yaml"
ADDRESS_SPACE = 8 << 30  # the commands below need ~3 GB of address space; what they refused asked for far more


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    args, cfg, run_dir = train_tiny_run(tmp_path_factory.mktemp("hostile"), ["trainer.checkpoint_every=2"])
    return args, run_dir


def _limited(argv, limit: int = ADDRESS_SPACE, file_size: int | None = None, timeout: int = 300):
    """Run `argv` with RLIMIT_AS (and RLIMIT_FSIZE, SIGXFSZ ignored so a write past it fails with EFBIG)."""

    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, preexec_fn=limits)


def _one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("nami: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


def _model_dir(run_dir, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(run_dir / "export" / "0001", target)
    return target


@pytest.mark.parametrize("poison", ["nan", "inf", "bool"])
def test_weights_that_are_not_finite_floats_are_refused(run, tmp_path, capsys, poison):
    """All-NaN / inf (or bool) weights sampled to black images with exit 0 before (item 6)."""
    args, run_dir = run
    model = _model_dir(run_dir, tmp_path)
    weights = load_file(model / "model.safetensors")
    name = "model.final.linear.weight"
    value = {"nan": float("nan"), "inf": float("inf")}.get(poison)
    weights[name] = torch.ones_like(weights[name], dtype=torch.bool) if poison == "bool" else torch.full_like(
        weights[name], value)  # fmt: skip
    save_file(weights, model / "model.safetensors")
    code, _, err = cli(capsys, "sample", "--ckpt", model, "--prompt", "x", "--out", tmp_path / "s")
    line = one_error_line(err)
    assert code == 2 and "final.linear.weight" in line and ("NaN" in line or "bool" in line), line
    code, _, err = cli(capsys, "train", TINY, *args, "name=from_nan", f"trainer.init_from={model}")
    assert code == 2 and "trainer.init_from" in one_error_line(err)


def test_a_nan_bridge_is_refused(run, tmp_path, capsys):
    _, run_dir = run
    model = _model_dir(run_dir, tmp_path)
    bridges = load_file(model / "bridges.safetensors")
    first = sorted(bridges)[0]
    bridges[first] = torch.full_like(bridges[first], float("nan"))
    save_file(bridges, model / "bridges.safetensors")
    code, _, err = cli(capsys, "sample", "--ckpt", model, "--prompt", "x", "--out", tmp_path / "s")
    assert code == 2 and "NaN" in one_error_line(err) and "bridge" in one_error_line(err)


def test_a_step_that_is_not_an_ascii_number_is_no_step(run, tmp_path, capsys):
    """metadata step="²" passed isdigit() and broke int() (item 7)."""
    _, run_dir = run
    model = _model_dir(run_dir, tmp_path)
    save_file(load_file(model / "model.safetensors"), model / "model.safetensors", metadata={"step": "²"})
    code, out, err = cli(capsys, "export", model, "--out", tmp_path / "again")
    assert code == 0 and "weights without a step" in out, err


def _fsdp_checkpoint(tmp_path, tamper):
    """A real DCP directory of a small state, its index rewritten by `tamper(metadata)` (the test owns it)."""
    import torch.distributed.checkpoint as dcp

    directory = tmp_path / "step00000001.ckpt"
    dcp.save({"state_dict": {"ema.model.a": torch.randn(64, 64)}}, checkpoint_id=directory, no_dist=True)
    with open(directory / ".metadata", "rb") as handle:
        metadata = pickle.load(handle)  # the test's own file
    tamper(metadata.state_dict_metadata["state_dict.ema.model.a"], metadata)
    with open(directory / ".metadata", "wb") as handle:
        pickle.dump(metadata, handle)
    return directory


def _absurd(item, metadata):
    item.size = torch.Size([10**7, 10**7])  # 400 TB of float32


def _outside(item, metadata):
    item.chunks[0].offsets = torch.Size([128, 0])


def _wrong_size(item, metadata):
    from torch.distributed.checkpoint.metadata import MetadataIndex

    chunk = item.chunks[0]
    info = metadata.storage_data[MetadataIndex("state_dict.ema.model.a", chunk.offsets, 0)]
    info.length = 64  # far fewer bytes than 64 x 64 floats


@pytest.mark.parametrize("tamper", [_absurd, _outside, _wrong_size], ids=["absurd_size", "chunk_outside", "short_chunk"])
def test_an_fsdp_index_that_claims_too_much_is_one_line_before_allocating(tmp_path, tamper):
    """Sizes and chunks of a DCP index are checked against the tensor and the files' real sizes (item 8)."""
    directory = _fsdp_checkpoint(tmp_path, tamper)
    code = (f"from nami.artifacts.weights import read_weights\nfrom nami.config import ConfigError\n"
            f"try:\n    read_weights({str(directory)!r})\nexcept ConfigError as err:\n    print('refused:', err)\n")
    result = _limited([sys.executable, "-c", code])
    assert result.returncode == 0 and "refused: --ckpt" in result.stdout, (result.stdout, result.stderr[-2000:])


def test_a_model_directory_config_is_data(run, tmp_path):
    """config.json of a model directory from elsewhere: absurd sizes refused before building, nesting and
    unknown top-level keys one line or ignored, no environment variable read (item 9)."""
    from nami import NamiPipeline

    _, run_dir = run
    model = _model_dir(run_dir, tmp_path)
    data = json.loads((model / "config.json").read_text())
    for change, words in ((("model", "width", 10**9), "model.width"), (("text_encoder", "max_length", 10**9),
                          "text_encoder.max_length"), (("model", "width", 8192), "does not fit")):  # fmt: skip
        bad = json.loads(json.dumps(data))
        bad[change[0]][change[1]] = change[2]
        if change[2] == 8192:  # within the ranges, far larger than the weights: caught by the header shapes
            bad["model"]["heads"] = 64
        (model / "config.json").write_text(json.dumps(bad))
        result = _limited(nami_command("sample", "--ckpt", model, "--prompt", "x", "--out", tmp_path / "s"))
        assert result.returncode == 2 and words in _one_line(result), result.stderr[-2000:]
    (model / "config.json").write_text('{"model": ' + "[" * 100_000 + "]" * 100_000 + "}")
    result = _limited(nami_command("sample", "--ckpt", model, "--prompt", "x"))
    assert result.returncode == 2 and "config.json" in _one_line(result)
    data.update(training={"x": 1}, parts={"y": 2}, name="${oc.env:HOME}")  # keys __init__ takes; an interpolation
    (model / "config.json").write_text(json.dumps(data))
    pipe = NamiPipeline.from_pretrained(model)
    assert pipe.config.name == "${oc.env:HOME}"  # text, never resolved from the environment
    assert pipe.training == data["_training"]  # provenance is "_training"; the stray keys are not config


def test_outputs_are_checked_before_the_work_and_prompts_must_be_text(run, tmp_path):
    _, run_dir = run
    model = _model_dir(run_dir, tmp_path)
    (tmp_path / "a_file").write_text("not a directory")
    result = subprocess.run(nami_command("sample", "--ckpt", model, "--prompt", "x", "--out", tmp_path / "a_file"),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "--out" in _one_line(result) and "a_file" in _one_line(result)
    bad = subprocess.run([*nami_command("sample", "--ckpt", model, "--out", tmp_path / "s"), "--prompt",
                          b"caf\xe9".decode("utf-8", "surrogateescape")], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "--prompt" in _one_line(bad)
    many = subprocess.run(nami_command("eval", "--ckpt", model, "--num", "1000000000"), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert many.returncode == 2 and "--num" in _one_line(many)


def test_a_stale_partial_checkpoint_never_skips_the_final_save(tmp_path):
    """A `.partial` left by a failed save made the end-of-training save skip silently (item 15)."""
    args, cfg, run_dir = train_tiny_run(tmp_path, ["trainer.checkpoint_every=10"])
    partial = run_dir / "checkpoints" / "step00000005.ckpt.partial"
    partial.write_bytes(b"left by a failed save")
    from nami.lit.runner import train

    train(load(TINY, [*args, "trainer.checkpoint_every=10", "trainer.max_steps=5", "trainer.resume=last"]))
    saved = torch.load(run_dir / "checkpoints" / "step00000005.ckpt", weights_only=True, map_location="cpu")
    assert saved["global_step"] == 5 and not partial.exists()


def test_a_full_disk_is_one_line_and_leaves_no_partial(run, tmp_path):
    """A checkpoint or a model directory that cannot be written: one line naming the path and the cause, the
    previous checkpoint intact, no partial file left (item 16; a file-size limit stands in for a full disk)."""
    args, run_dir = run
    copy = tmp_path / "runs"
    shutil.copytree(run_dir.path.parent, copy)
    run_copy = copy / run_dir.name
    args = [a if not a.startswith("trainer.default_root_dir=") else f"trainer.default_root_dir={copy}" for a in args]
    before = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    result = _limited(nami_command("train", TINY, *args, "trainer.max_steps=5", "trainer.checkpoint_every=1",
                                   "trainer.resume=last"), file_size=64 << 10)  # fmt: skip
    assert result.returncode != 0 and "No space" not in result.stdout
    line = _one_line(result)
    assert "could not write the checkpoint" in line and str(run_copy) in line and "full disk" in line, line
    after = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    assert not [p for p in after if "partial" in p] and set(before) <= set(after)
    torch.load(run_copy / "checkpoints" / before[-1], weights_only=True, map_location="cpu")  # still loadable
    result = _limited(nami_command("export", run_copy, "--out", tmp_path / "exported"), file_size=64 << 10)
    assert result.returncode == 2 and "exported" in _one_line(result) and "File too large" in _one_line(result)
    assert not list(tmp_path.glob(".exported*")) and not (tmp_path / "exported").exists()


def _read_only(directory) -> list[str]:
    """The argv prefix that runs a command with `directory` read-only: a read-only bind mount in a private mount
    namespace for root (whom permissions do not stop), `chmod a-w` for anyone else."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return []
    prefix = ["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(directory)]
    if shutil.which("unshare") is None or subprocess.run([*prefix, "true"], capture_output=True).returncode:
        pytest.skip("no way to make a directory read-only for root here (unshare -rm with mount --bind)")
    return prefix


def test_export_into_a_read_only_directory_is_one_line(run, tmp_path):
    """`nami export` with --out under a read-only directory, and into RUN/export of a read-only run directory
    (numbered_directory's mkdir escaped as an OSError traceback): one line naming the path and the cause, nothing
    left behind (item 16)."""
    _, run_dir = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir.path, copy)
    shutil.rmtree(copy / "export")
    (copy / "export").mkdir()  # there, but nothing exported into it yet
    locked = tmp_path / "locked"
    locked.mkdir()
    for prefix, argv, named in ((_read_only(locked), ["--out", locked / "model"], locked / "model"),
                                (_read_only(copy / "export"), [], copy / "export" / "0001")):  # fmt: skip
        result = subprocess.run([*prefix, *map(str, nami_command("export", copy, *argv))], capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        line = _one_line(result)
        assert result.returncode == 2 and str(named) in line, line
        assert "Read-only file system" in line or "Permission denied" in line, line
    assert list(locked.iterdir()) == [] and list((copy / "export").iterdir()) == []


WRITE_WEIGHTS = """
import sys
from types import SimpleNamespace
import torch
from nami.errors import RunStopped
from nami.lit.callbacks import ExportWeights

module = SimpleNamespace(ema_weights=lambda: {"model.w": torch.zeros(1 << 20)})  # 4 MB
try:
    ExportWeights(sys.argv[1]).on_train_end(SimpleNamespace(is_global_zero=True, global_step=3), module)
except RunStopped as err:
    print(err)
"""


def test_weights_that_cannot_be_written_are_one_line_and_leave_no_partial(tmp_path):
    """weights.safetensors at the end of training under a file-size limit (a full disk): one line naming it and the
    cause, no partial file (it was written in place: a kill or a full disk left half a weights file)."""
    target = tmp_path / "run" / "weights.safetensors"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", WRITE_WEIGHTS, str(target)], capture_output=True, text=True,
                            timeout=300, env=env, preexec_fn=_file_size_limit(64 << 10))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"could not write {target}" in result.stdout and "File too large" in result.stdout, result.stdout
    assert list(target.parent.iterdir()) == []


def _file_size_limit(size: int):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit
