"""The released NAMI-2B's checkpoint: `nami convert official` against diffusers' own FluxTransformer2DModel
(an independent implementation of the release's network), the round trip, the release's bridge and timestep
grid, the full 2B shapes on the meta device, and bad inputs."""

from __future__ import annotations

import subprocess

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from nami.bridges import bridge_from_config, load_bridges
from nami.cli import main
from nami.config import load
from nami.flow import PyramidFlow
from nami.artifacts.convert import official_transformer_to_kit
from nami.models import build_model
from nami.models.layers import axis_rope_angles, rope_angles

from .helpers import nami_command
from .official_fixtures import (
    FLUX,
    OFFICIAL,
    POOLED_DIM,
    TEXT_DIM,
    TINY,
    blocks_prefix,
    random_flux,
    write_release,
)

ORACLE_ATOL = 1e-5
PARAMS_2B = 2_117_643_840  # the release's transformer (and the kit's nami_2b preset)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The tiny release files, converted by the `nami` command: (root, transformer state, bridge state)."""
    root = tmp_path_factory.mktemp("release")
    transformer, bridge, state, bridge_state = write_release(root / "weights")
    result = subprocess.run(nami_command("convert", "official", OFFICIAL, *TINY, "--transformer", transformer,
                                         "--bridge", bridge, "--out", root / "kit"),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "converted" in result.stdout
    return root, state, bridge_state


def _flux_output(state: dict, depth: int, z, t, states, pooled) -> torch.Tensor:
    """diffusers' Flux holding the first `depth` blocks (doubles first), on the packed latent; unpacked."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    double = min(depth, FLUX["num_layers"])
    flux = random_flux(num_layers=double, num_single_layers=depth - double)
    flux.load_state_dict(blocks_prefix(state, double, depth - double))
    b, c, h, w = z.shape
    ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, z.device, z.dtype)
    out = flux(hidden_states=FluxPipeline._pack_latents(z, b, c, h, w), encoder_hidden_states=states,
               pooled_projections=pooled, timestep=t, img_ids=ids, txt_ids=torch.zeros(states.shape[1], 3),
               return_dict=False)[0]  # fmt: skip
    return FluxPipeline._unpack_latents(out, h, w, 1)


@torch.no_grad()
def test_every_stage_matches_diffusers_flux_holding_its_blocks(release):
    root, state, _ = release
    cfg = load(OFFICIAL, TINY)
    model = build_model(cfg).eval()
    weights = load_file(str(root / "kit" / "model.safetensors"))  # a model directory
    model.load_state_dict({k[len("model.") :]: v for k, v in weights.items()})
    g = torch.Generator().manual_seed(3)
    states, pooled = torch.randn(2, 7, TEXT_DIM, generator=g), torch.randn(2, POOLED_DIM, generator=g)
    t = torch.tensor([0.97166, 0.386])  # diffusers takes T / 1000 and multiplies back in the model's dtype
    diffs, outputs = [], []
    for k, side in enumerate(cfg.stage_latent_sizes()):
        z = torch.randn(2, 3, side, side, generator=g)
        ours = model(z, t * 1000, states, None, pooled, stage=k)
        theirs = _flux_output(state, cfg.model.stage_depths[k], z, t, states, pooled)
        diffs.append((ours - theirs).abs().max().item())
        outputs.append(theirs)
    print("max abs difference per stage:", diffs)
    assert max(diffs) <= ORACLE_ATOL, diffs
    assert all(o.std() > 0.3 for o in outputs)  # random adaLN and head: far from the zero-init identity
    z = torch.randn(2, 3, 8, 8, generator=g)  # nesting is real: fewer blocks give another output
    first_blocks = model(z, t * 1000, states, None, pooled, stage=0)
    assert (first_blocks - model(z, t * 1000, states, None, pooled)).abs().max() > 0.1


def test_reverse_round_trips_bit_exactly(release, tmp_path):
    root, state, bridge_state = release
    code = main(["convert", "official", str(OFFICIAL), *TINY, "--reverse", "--transformer", str(root / "kit"),
                 "--out", str(tmp_path / "back")])  # fmt: skip
    assert code == 0
    back = torch.load(tmp_path / "back" / "transformer" / "pytorch_model_fsdp.bin", weights_only=True)
    bridge_back = torch.load(tmp_path / "back" / "bridge_flow.bin", weights_only=True)
    for original, returned in ((state, back), (bridge_state, bridge_back)):
        assert returned.keys() == original.keys()
        for k in original:
            assert returned[k].dtype == original[k].dtype and torch.equal(returned[k], original[k]), k


def test_scalar_bias_from_the_release_file_is_scale_times_nearest_up_plus_shift(release):
    root, _, bridge_state = release
    cfg = load(OFFICIAL, TINY)
    bridge = load_bridges(bridge_from_config(cfg), root / "kit" / "bridges.safetensors")
    flow = PyramidFlow.from_config(cfg, bridge)
    for k in (1, 2):
        z = torch.randn(2, 3, 8 * 2 ** (k - 1), 8 * 2 ** (k - 1))
        want = bridge_state["scale"][k - 1] * F.interpolate(z, scale_factor=2, mode="nearest")
        want = want + bridge_state[f"shift.{k - 1}"]
        assert torch.equal(flow.transition(z, k), want)


def test_official_grid_for_ten_steps_in_every_stage():
    cfg = load(OFFICIAL, ["text_encoder.kind=learned"])
    flow = PyramidFlow.from_config(cfg, None)
    assert [tuple(w) for w in flow.schedule.integer_model_time_windows] == [(1000, 744), (744, 386), (386, 1)]
    for k, (t_start, t_last, m) in enumerate([(1000, 745, 256), (744, 387, 358), (386, 2, 385)]):
        grid = flow.grid(k, 10)
        times = [t_start + i * (t_last - t_start) / 9 for i in range(10)]
        assert list(grid.model_times) == pytest.approx(times, abs=1e-4)
        steps = [b - a for a, b in zip(grid.sigmas, grid.sigmas[1:])]
        assert steps == pytest.approx([-(1 - 1 / m) / 9] * 9 + [-1 / m], abs=1e-4)
    stage0 = flow.grid(0, 10)
    assert stage0.model_times[1] == pytest.approx(971.67, abs=1e-2)
    assert stage0.model_times[-2] == pytest.approx(773.33, abs=1e-2)
    assert stage0.sigmas[0] - stage0.sigmas[1] == pytest.approx(0.1107, abs=1e-4)
    assert stage0.sigmas[-2] == pytest.approx(0.0039, abs=1e-4)


def test_full_size_release_shapes_convert_on_the_meta_device():
    from diffusers import FluxTransformer2DModel

    cfg = load(OFFICIAL)
    with torch.device("meta"):  # diffusers' own 2B layout, as the release's inference code builds it
        flux = FluxTransformer2DModel(**{**FLUX, "in_channels": 64, "num_layers": 8, "num_single_layers": 14,
                                         "num_attention_heads": 16, "joint_attention_dim": 4096,
                                         "pooled_projection_dim": 1024})  # fmt: skip
    state = flux.state_dict()
    assert sum(v.numel() for v in state.values()) == PARAMS_2B
    kit = official_transformer_to_kit(cfg, state)
    assert all(v.is_meta for v in kit.values())
    assert sum(v.numel() for v in kit.values()) == PARAMS_2B


def test_rope_axes_match_diffusers_at_1024_px_and_default_to_the_two_axis_layout():
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    image_ids = FluxPipeline._prepare_latent_image_ids(1, 64, 64, "cpu", torch.float32)  # 1024 px, f8, p 2
    ids = torch.cat([torch.zeros(256, 3), image_ids])  # text tokens at 0
    cos, sin = FluxPosEmbed(10000, [16, 56, 56])(ids)
    angles = axis_rope_angles(ids.long(), [16, 56, 56])
    assert torch.equal(angles.cos().float().repeat_interleave(2, -1), cos)
    assert torch.equal(angles.sin().float().repeat_interleave(2, -1), sin)
    two_axis = rope_angles(ids[:, 1:].long(), 128)  # the default layout is [0, 64, 64] up to float32 rounding
    assert torch.allclose(axis_rope_angles(ids.long(), [0, 64, 64]).float(), two_axis, rtol=1e-6, atol=1e-4)


def _convert(capsys, *args) -> tuple[int, str]:
    code = main(["convert", "official", *map(str, args)])
    return code, capsys.readouterr().err.strip()


def test_bad_files_keys_and_shapes_are_one_line_and_exit_2(release, tmp_path, capsys):
    root, state, bridge_state = release
    transformer, bridge = root / "weights" / "transformer", root / "weights" / "bridge_flow.bin"
    cases = []
    missing = dict(state)
    del missing["single_transformer_blocks.1.attn.norm_k.weight"]
    torch.save(missing, tmp_path / "missing.bin")
    cases.append((["--transformer", tmp_path / "missing.bin", "--bridge", bridge], "lacks single_trans"))
    extra = {**state, "time_text_embed.guidance_embedder.linear_1.weight": torch.zeros(256, 256)}
    torch.save(extra, tmp_path / "extra.bin")
    cases.append((["--transformer", tmp_path / "extra.bin", "--bridge", bridge], "guidance_embedder"))
    (tmp_path / "garbage.bin").write_bytes(b"not a checkpoint")
    cases.append((["--transformer", tmp_path / "garbage.bin", "--bridge", bridge], "garbage.bin"))
    cases.append((["--transformer", tmp_path / "nothing.bin", "--bridge", bridge], "nothing.bin"))
    torch.save({**bridge_state, "shift.1": torch.zeros(1, 3, 16, 16)}, tmp_path / "small_bridge.bin")
    cases.append((["--transformer", transformer, "--bridge", tmp_path / "small_bridge.bin"], "shift.1 has"))
    for args, needle in cases:
        code, err = _convert(capsys, OFFICIAL, *TINY, *args, "--out", tmp_path / "out")
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    code, err = _convert(capsys, OFFICIAL, *TINY, "model.width=384", "model.heads=3", "--transformer",
                         transformer, "--bridge", bridge, "--out", tmp_path / "out")  # fmt: skip
    assert code == 2 and "x_embedder.weight has shape [256, 12], the nami_2b_official model needs [384" in err
    code, err = _convert(capsys, OFFICIAL, *TINY, "bridge.kind=conv1x1", "--transformer", transformer,
                         "--bridge", bridge, "--out", tmp_path / "out")  # fmt: skip
    assert code == 2 and err.startswith("nami: error: bridge.kind"), err
    assert not (tmp_path / "out").exists()  # nothing written on any failure
    code, err = _convert(capsys, OFFICIAL, *TINY, "--transformer", transformer, "--bridge", bridge,
                         "--out", root / "kit")  # fmt: skip
    assert code == 2 and "not empty" in err and len(err.splitlines()) == 1
