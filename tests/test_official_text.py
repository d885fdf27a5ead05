"""The released NAMI-2B's text path, prompting and precision in the kit, and what a converted checkpoint is
for: `nami sample` with it, and `trainer.init_from` training from it. Text encoders are tiny random mT5 / BERT
models saved as the release lays them out (offline)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from nami.cli import main
from nami.config import load
from nami.lit.joint_flow import JointFlowModule
from nami.sampling.pipeline import Pipeline
from nami.lit.runner import train
from nami.models import LearnedTextEncoder, build_model, build_text_encoder
from nami.parts import build_parts

from .helpers import EXPERIMENTS, LEARNED_TEXT
from .official_fixtures import OFFICIAL, TINY, text_overrides, write_release, write_text_encoders

PROMPTS = ["a red circle", "two blue squares left of a green triangle"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Tiny release files converted in-process, and the tiny text encoders: (converted dir, overrides)."""
    from nami.artifacts.convert import convert_official

    root = tmp_path_factory.mktemp("official")
    transformer, bridge, _, _ = write_release(root / "weights")
    mt5, mclip = write_text_encoders(root / "weights")
    args = [*TINY, *text_overrides(mt5, mclip)]
    convert_official(load(OFFICIAL, args), transformer, bridge, root / "kit")
    return root / "kit", args


@torch.no_grad()
def test_states_without_encoder_mask_pooled_from_position_0_and_no_attention_mask(release):
    from transformers import AutoTokenizer, BertModel, MT5EncoderModel

    _, args = release
    cfg = load(OFFICIAL, args)
    mt5_path, mclip_path = cfg.text_encoder.path, cfg.text_encoder.pooled_path
    encoder = build_text_encoder(cfg.text_encoder)
    text = encoder(PROMPTS)
    tokenizer = AutoTokenizer.from_pretrained(mt5_path)
    tokens = tokenizer(PROMPTS, padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    assert not tokens.attention_mask.all()  # the first prompt is padded: the switches matter
    mt5 = MT5EncoderModel.from_pretrained(mt5_path).eval()
    assert torch.allclose(text.states, mt5(input_ids=tokens.input_ids).last_hidden_state, atol=1e-6)
    assert not torch.allclose(text.states, mt5(**tokens).last_hidden_state, atol=1e-3)
    bert = BertModel.from_pretrained(mclip_path, add_pooling_layer=False).eval()
    pooled_tokens = tokenizer(PROMPTS, padding="max_length", max_length=6, truncation=True,
                              return_tensors="pt")  # fmt: skip
    assert torch.allclose(text.pooled, bert(**pooled_tokens).last_hidden_state[:, 0], atol=1e-6)
    assert encoder.pooled_model.pooler is None  # loaded as the release does (its tokenizer from ../tokenizer)
    assert text.mask.all()  # the MM-DiT attends every padding token ...
    model = build_model(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    z, t = torch.randn(2, 3, 8, 8), torch.tensor([900.0, 800.0])
    out = model(z, t, text.states, text.mask, text.pooled, stage=0)
    assert torch.equal(out, model(z, t, text.states, None, text.pooled, stage=0))
    masked = model(z, t, text.states, tokens.attention_mask.bool(), text.pooled, stage=0)
    assert not torch.allclose(out[0], masked[0], atol=1e-4)  # ... which a padding mask would have hidden

    masks_on = load(OFFICIAL, [*args, "text_encoder.encoder_mask=true", "text_encoder.attention_mask=true"])
    default = build_text_encoder(masks_on.text_encoder)(PROMPTS)
    assert torch.equal(default.mask, tokens.attention_mask.bool())
    assert torch.allclose(default.states, mt5(**tokens).last_hidden_state, atol=1e-6)


class RecordingText(LearnedTextEncoder):
    """The learned encoder, remembering every prompt list it was given."""

    seen: list[list[str]]

    def forward(self, prompts):
        self.seen.append(list(prompts))
        return super().forward(prompts)


def _pipeline(**settings) -> tuple[Pipeline, RecordingText]:
    cfg = load(EXPERIMENTS / "tiny.yaml", LEARNED_TEXT)
    parts = build_parts(cfg, fitted=False)
    text = RecordingText(64, 64, cfg.text_encoder.max_length)
    text.seen = []
    return Pipeline.from_config(parts, cfg, text_encoder=text, **settings), text


def test_prompt_suffix_and_negative_prompt_reach_the_encoder_and_guidance_1_skips_the_negative():
    pipeline, text = _pipeline(prompt_suffix=", detailed", negative_prompt="blurry")
    pipeline.encode_prompts(PROMPTS, guidance=3.0)
    pipeline.encode_prompts(PROMPTS, guidance=1.0)
    assert text.seen == [[p + ", detailed" for p in PROMPTS] + ["blurry", "blurry"],
                         [p + ", detailed" for p in PROMPTS]]  # fmt: skip
    plain, text = _pipeline(prompt_suffix="", negative_prompt="")
    plain.encode_prompts(PROMPTS, guidance=3.0)
    assert text.seen == [PROMPTS + ["", ""]]


@pytest.mark.parametrize("precision", ["fp16-true", "bf16-mixed", "fp32", "auto"])
def test_sampler_precision_casts_or_autocasts(precision):
    # auto follows trainer.precision on the sampling device: bf16-mixed here, so the CPU autocasts to bfloat16
    pipeline, _ = _pipeline(precision=precision, trainer_precision="bf16-mixed")
    seen = []

    def record(module, args):
        seen.append((args[0].dtype, torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")))

    pipeline.model.register_forward_pre_hook(record)
    images = pipeline.sample(PROMPTS[:1], [1], 3.0, mode="uniform").images  # one step shows the dtypes
    want = {"fp16-true": (torch.float16, False), "bf16-mixed": (torch.float32, torch.bfloat16),
            "fp32": (torch.float32, False), "auto": (torch.float32, torch.bfloat16)}[precision]  # fmt: skip
    assert set(seen) == {want}
    weights = {p.dtype for p in pipeline.model.parameters()}
    assert weights == {torch.float16 if precision == "fp16-true" else torch.float32}
    assert images.dtype == torch.float32 and torch.isfinite(images).all()


def test_nami_sample_runs_the_converted_release(release, tmp_path):
    kit, args = release
    out = tmp_path / "samples"
    code = main(["sample", str(OFFICIAL), *args, "trainer.accelerator=cpu", "--ckpt", str(kit),
                 "--prompt", PROMPTS[0], "--steps", "1,1,1", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert len(list(out.rglob("000-*.png"))) == 1


def test_a_gpu_config_samples_on_a_machine_without_a_gpu(release, tmp_path, capsys):
    """nami_2b_official.yaml says trainer.accelerator=gpu; sampling needs no GPU: it runs on the CPU with a note
    instead of Lightning's "No supported gpu backend found!" traceback (issue 21, bug 3)."""
    kit, args = release
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert load(OFFICIAL, args).trainer.accelerator == "gpu"
    code = main(["sample", str(OFFICIAL), *args, "--ckpt", str(kit), "--prompt", PROMPTS[0], "--steps", "1,1,1",
                 "--out", str(tmp_path / "samples")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "sampling on the CPU" in err and "Traceback" not in err
    assert len(list((tmp_path / "samples").rglob("000-*.png"))) == 1


class FirstWeights(JointFlowModule):
    """Keeps the model's and the EMA's weights as training starts."""

    at_start: dict = {}

    def on_train_start(self) -> None:
        FirstWeights.at_start = {f"{name}.{k}": v.detach().clone() for name, part in
                                 (("model", self.model), ("ema", self.ema["model"])) for k, v in
                                 part.state_dict().items()}  # fmt: skip


def test_init_from_starts_training_from_the_converted_weights(release, tmp_path):
    from data_modules.synth import write_shapes

    kit, args = release
    write_shapes(tmp_path / "shapes", num=12, shards=1, resolution=32)
    cfg = load(OFFICIAL, [
        *args, f"trainer.init_from={kit}", f"data.shards={tmp_path / 'shapes'}/*.tar", "data.batch_size=6",
        "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto",
        "trainer.precision=32-true", "trainer.activation_checkpointing=false", "trainer.max_steps=1",
        "trainer.checkpoint_every=1", f"trainer.default_root_dir={tmp_path}",
        "log.sample_prompts=[a red circle]", "sampler.steps=[1,1,1]",
    ])  # fmt: skip
    run = train(cfg, module_cls=FirstWeights)
    converted = load_file(str(kit / "model.safetensors"))
    start = FirstWeights.at_start
    for key, tensor in converted.items():
        name = key[len("model.") :]
        assert torch.equal(start[f"model.{name}"], tensor) and torch.equal(start[f"ema.{name}"], tensor), key
    assert (run / "checkpoints" / "step00000001.ckpt").exists() and (run / "weights.safetensors").is_file()
    bridges = load_file(str(run / "bridges.safetensors"))  # the converted bridge, kept beside the new weights
    assert all(torch.equal(v, load_file(str(kit / "bridges.safetensors"))[k]) for k, v in bridges.items())
