"""The release in three commands (issue 22, item 7): `nami release download` fetches every piece of the released
NAMI-2B into the layout experiments/nami_2b_official.yaml reads (against a local stand-in for the hub, and
against huggingface_hub's own offline mode), `nami release check` names a missing or misplaced piece and where
it was looked for, and the preset itself fails in one line on a missing path."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest

import huggingface_hub
from nami.cli import release
from nami.config import load

from .official_fixtures import OFFICIAL, TINY
from .release_fixtures import DECOYS, VAE_OVERRIDES, FakeHub, write_hub
from .safety_fixtures import cli, one_error_line

# The official preset at the tiny release's sizes, every model path left to $NAMI_WEIGHTS.
TINY_OFFICIAL = [*(o for o in TINY if not o.startswith("autoencoder.")), *VAE_OVERRIDES,
                 "text_encoder.max_length=8", "text_encoder.pooled_max_length=6", "text_encoder.dtype=float32"]
PATH_VARIABLES = ("NAMI_TEXT_ENCODER", "NAMI_POOLED_ENCODER", "NAMI_VAE")


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    return write_hub(tmp_path_factory.mktemp("hub"))


@pytest.fixture
def hub(hub_root, monkeypatch):
    fake = FakeHub(hub_root)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    for name in PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return fake


def _repo_files(hub_root, repo, folder=""):
    base = hub_root / repo / folder
    return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}


def test_download_fetches_every_piece_into_the_layout_the_preset_reads(hub, hub_root, tmp_path, capsys,
                                                                       monkeypatch):  # fmt: skip
    from nami.models import build_autoencoder, build_text_encoder

    weights = tmp_path / "weights"
    code, out, err = cli(capsys, "release", "download", "--out", weights)
    assert code == 0, err
    assert all(status.ok for status in release.check_layout(weights))
    for piece in release.pieces():  # every piece printed with where it went and where it came from
        assert any(line.startswith("fetched") and piece.name in line and piece.repo in line
                   for line in out.splitlines()), out  # fmt: skip
    # the files are the hub's, byte for byte, where the release's inference code loads them
    pairs = [("qihoo360/NAMI-T2I", "transformer/pytorch_model_fsdp.bin", "transformer/pytorch_model_fsdp.bin"),
             ("qihoo360/NAMI-T2I", "bridge_flow.bin", "bridge_flow.bin"),
             ("qihoo360/NAMI-T2I", "vae/config.json", "vae/config.json"),
             ("Tencent-Hunyuan/HunyuanDiT", "t2i/clip_text_encoder/model.safetensors",
              "mclip/clip_text_encoder/model.safetensors"),
             ("Tencent-Hunyuan/HunyuanDiT", "t2i/tokenizer/tokenizer.json", "mclip/tokenizer/tokenizer.json"),
             ("google/mt5-xxl", "model.safetensors", "mt5/model.safetensors")]  # fmt: skip
    for repo, source, target in pairs:
        assert filecmp.cmp(hub_root / repo / source, weights / target, shallow=False)
    # only what the release needs: no decoy anywhere, no staging left, one download per repository
    decoys = [p for p in weights.rglob("*") if p.is_file() and b"not part of the release" in p.read_bytes()]
    assert decoys == [] and not (weights / "t2i").exists()
    assert not (weights / release.STAGING).exists()
    assert [repo for repo, dry, _ in hub.calls if not dry] == list(DECOYS)

    # the preset finds them through $NAMI_WEIGHTS alone: text encoders and VAE load from the downloaded folder
    monkeypatch.setenv("NAMI_WEIGHTS", str(weights))
    cfg = load(OFFICIAL, TINY_OFFICIAL)
    assert cfg.autoencoder.path == str(weights / "vae")
    text = build_text_encoder(cfg.text_encoder)(["a red circle"])
    assert text.states.shape == (1, 8, 32) and text.pooled.shape == (1, 16)
    assert build_autoencoder(cfg.autoencoder).channels == 3

    # a second run asks the hub nothing (a complete folder needs no network) and says so
    hub.calls.clear()
    code, out, _ = cli(capsys, "release", "download", "--out", weights)
    assert code == 0 and hub.calls == []
    assert sum(line.startswith("complete") for line in out.splitlines()) == len(release.pieces())


def test_a_partly_filled_folder_fetches_only_what_is_missing(hub, hub_root, tmp_path, capsys):
    weights = tmp_path / "weights"
    assert cli(capsys, "release", "download", "--out", weights)[0] == 0
    shutil.rmtree(weights / "mclip" / "tokenizer")
    (weights / "mt5" / "tokenizer.json").unlink()
    mt5_weights = (weights / "mt5" / "model.safetensors").stat().st_mtime_ns
    hub.calls.clear()
    code, out, err = cli(capsys, "release", "download", "--out", weights)
    assert code == 0, err
    asked = {repo: patterns for repo, dry, patterns in hub.calls if not dry}
    assert set(asked) == {"Tencent-Hunyuan/HunyuanDiT", "google/mt5-xxl"}  # the NAMI repository is complete
    assert set(asked["Tencent-Hunyuan/HunyuanDiT"]) == {"t2i/tokenizer/tokenizer.json",
                                                       "t2i/tokenizer/tokenizer_config.json"}  # fmt: skip
    assert "model.safetensors" not in asked["google/mt5-xxl"]  # the 50 GB are not fetched again
    assert (weights / "mt5" / "model.safetensors").stat().st_mtime_ns == mt5_weights
    assert all(status.ok for status in release.check_layout(weights))


def test_a_piece_the_repository_lacks_is_one_line_before_anything_is_downloaded(hub_root, tmp_path, capsys,
                                                                                 monkeypatch):  # fmt: skip
    hub = tmp_path / "hub"
    shutil.copytree(hub_root, hub)
    shutil.rmtree(hub / "qihoo360/NAMI-T2I/vae")
    fake = FakeHub(hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    code, _, err = cli(capsys, "release", "download", "--out", tmp_path / "weights")
    line = one_error_line(err)
    assert code == 2 and "VAE" in line and "qihoo360/NAMI-T2I has no vae/config.json" in line
    assert all(dry for _, dry, _ in fake.calls)  # every repository asked first, nothing fetched
    assert not (tmp_path / "weights" / "transformer").exists()


def test_too_little_disk_is_one_line_before_anything_is_downloaded(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(release.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 10))
    code, _, err = cli(capsys, "release", "download", "--out", tmp_path / "weights")
    assert code == 2 and "free; nothing was downloaded" in one_error_line(err)
    assert all(dry for _, dry, _ in hub.calls)


def test_offline_the_download_names_what_it_could_not_reach(tmp_path, capsys, monkeypatch):
    """huggingface_hub's own offline mode (HF_HUB_OFFLINE=1, as in every test), no stand-in: one line."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    code, _, err = cli(capsys, "release", "download", "--out", tmp_path / "weights")
    line = one_error_line(err)
    assert code == 2 and "https://huggingface.co/qihoo360/NAMI-T2I" in line and "offline" in line
    assert "transformer, bridge, VAE" in line


def test_check_names_a_missing_or_misplaced_piece_and_where_it_looked(hub, tmp_path, capsys):
    weights = tmp_path / "weights"
    assert cli(capsys, "release", "download", "--out", weights)[0] == 0
    code, out, _ = cli(capsys, "release", "check", weights)
    assert code == 0 and [row.split()[0] for row in out.splitlines()] == ["ok"] * len(release.pieces())

    (weights / "t2i").mkdir()
    shutil.move(weights / "mclip" / "tokenizer", weights / "t2i" / "tokenizer")  # HunyuanDiT's own path
    (weights / "vae" / "config.json").unlink()
    code, out, err = cli(capsys, "release", "check", weights)
    line = one_error_line(err)
    assert code == 2 and "2 of 6 pieces" in line and f"VAE: no {weights / 'vae' / 'config.json'}" in line
    tokenizer = next(row for row in out.splitlines() if "mCLIP tokenizer" in row)
    assert str(weights / "mclip" / "tokenizer" / "vocab.txt") in tokenizer
    assert f"found {weights / 't2i' / 'tokenizer' / 'tokenizer_config.json'}: misplaced" in tokenizer

    code, out, _ = cli(capsys, "release", "check", weights, "--json")
    report = json.loads(out)
    assert code == 2 and not report["complete"]
    assert [p["name"] for p in report["pieces"] if not p["ok"]] == ["VAE", "mCLIP tokenizer"]


def test_the_pieces_are_where_the_preset_and_the_converter_look(tmp_path, monkeypatch):
    """One layout: the preset's paths under $NAMI_WEIGHTS (and its default) are the pieces' folders, the
    tokenizer is where the text encoder looks beside the CLIP tower, the transformer and bridge are the
    files `nami convert official` reads."""
    from nami.artifacts.convert import OFFICIAL_BRIDGE, OFFICIAL_TRANSFORMER
    from nami.models.text import _tokenizer_path

    for name in PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    folders = {piece.name: piece.folder for piece in release.pieces()}
    for weights in (tmp_path / "w", None):
        if weights:
            monkeypatch.setenv("NAMI_WEIGHTS", str(weights))
        else:
            monkeypatch.delenv("NAMI_WEIGHTS", raising=False)
        root = release.default_weights()
        assert root == str(weights or release.DEFAULT_WEIGHTS)
        cfg = load(OFFICIAL)
        assert cfg.text_encoder.path == f"{root}/{folders['mT5-XXL']}"
        assert cfg.text_encoder.pooled_path == f"{root}/{folders['mCLIP text tower']}"
        assert cfg.autoencoder.path == f"{root}/{folders['VAE']}"
    tower = tmp_path / "w" / folders["mCLIP text tower"]
    tower.mkdir(parents=True)
    (tmp_path / "w" / folders["mCLIP tokenizer"]).mkdir()
    (tmp_path / "w" / folders["mCLIP tokenizer"] / "vocab.txt").write_text("[PAD]\n")
    assert _tokenizer_path(tower, "k") == tmp_path / "w" / folders["mCLIP tokenizer"]
    assert OFFICIAL_TRANSFORMER == Path(folders["transformer"]) / OFFICIAL_TRANSFORMER.name
    assert folders["bridge"] == "" and release.pieces()[1].required == ((OFFICIAL_BRIDGE,),)


def test_download_convert_sample_the_three_commands(hub, tmp_path, capsys, monkeypatch):
    """The README's three commands on the tiny release: download, convert, sample with no YAML (the model
    directory records the preset's paths under $NAMI_WEIGHTS)."""
    weights, kit, samples = tmp_path / "weights", tmp_path / "nami2b", tmp_path / "samples"
    monkeypatch.setenv("NAMI_WEIGHTS", str(weights))
    assert cli(capsys, "release", "download", "--out", weights)[0] == 0
    code, _, err = cli(capsys, "convert", "official", OFFICIAL, *TINY_OFFICIAL, "--transformer",
                       weights / "transformer", "--bridge", weights / "bridge_flow.bin", "--out", kit)  # fmt: skip
    assert code == 0, err
    code, out, err = cli(capsys, "sample", "--ckpt", kit, "--prompt", "a red circle", "--steps", "1,1,1",
                         "--out", samples)  # fmt: skip
    assert code == 0, err
    assert len(list(samples.rglob("000-*.png"))) == 1


def test_the_preset_on_a_folder_without_the_release_is_one_line(hub, tmp_path, capsys, monkeypatch):
    """`nami sample` with nami_2b_official.yaml where $NAMI_WEIGHTS holds nothing: one line naming the config
    key and the path (before: transformers' "couldn't connect to huggingface.co" for weights/mt5, a valid
    repository id), then the same for the VAE and the CLIP tokenizer once the pieces before them are there."""
    weights, kit = tmp_path / "weights", tmp_path / "nami2b"
    assert cli(capsys, "release", "download", "--out", weights)[0] == 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NAMI_WEIGHTS", "weights")  # relative, as the preset's default is
    assert cli(capsys, "convert", "official", OFFICIAL, *TINY_OFFICIAL, "--transformer", "weights/transformer",
               "--bridge", "weights/bridge_flow.bin", "--out", kit)[0] == 0  # fmt: skip
    sample = ["sample", OFFICIAL, *TINY_OFFICIAL, "--ckpt", kit, "--prompt", "x", "--steps", "1,1,1"]
    for piece, key, message in [("mt5", "text_encoder.path", "weights/mt5 does not exist"),
                                ("mclip/tokenizer", "text_encoder.pooled_path",
                                 "no tokenizer in weights/mclip/clip_text_encoder nor in weights/mclip/tokenizer"),
                                ("vae", "autoencoder.path", "weights/vae does not exist")]:  # fmt: skip
        shutil.move(weights / piece, tmp_path / "aside")
        code, _, err = cli(capsys, *sample)
        line = one_error_line(err)
        assert code == 2 and line.startswith(f"nami: error: {key}: ") and message in line, line
        shutil.move(tmp_path / "aside", weights / piece)
    assert cli(capsys, *sample, "--out", tmp_path / "samples")[0] == 0  # all back: it samples


def test_the_readme_names_every_piece_its_source_and_the_commands():
    from .helpers import REPO

    text = (REPO / "README.md").read_text()
    section = text[text.index("## The released NAMI-2B") :]
    section = section[: section.index("\n## ", 3)]
    for piece in release.pieces():
        assert f"https://huggingface.co/{piece.repo}" in section, piece.repo
        if piece.repo_folder:
            assert f"`{piece.repo_folder}/`" in section, piece.repo_folder
        for folder in Path(piece.folder).parts:
            assert f"{folder}/" in section, folder
        assert piece.required[0][0] in section
    for command in ("nami release download", "nami convert official --transformer", "nami sample --ckpt",
                    "nami release check", "nami data encode experiments/nami_2b_official.yaml",
                    "trainer.init_from=", "finetune.lora.rank=16", "--lora "):  # fmt: skip
        assert command in section, command
