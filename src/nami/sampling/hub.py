"""`nami.NamiPipeline`: a model directory in a notebook. `from_pretrained(DIR)` -> `pipe(prompts)` -> PIL images;
`save_pretrained(DIR)` writes the same layout back (model_dir.py).

Built on `huggingface_hub.ModelHubMixin`, which brings the Hub side for free: `from_pretrained` takes a local
directory or a hub id (downloaded once into the HF cache, offline afterwards), `push_to_hub` uploads, and
the model card's front matter is the Hub's. The layout itself is the kit's (`nami.artifacts.model_dir`): the mixin's own
writer would put the mixin's init arguments into config.json and PyTorchModelHubMixin one module's state dict
into model.safetensors, while a model directory holds the kit's config, the EMA weights and the bridge.
Two mixin behaviours are changed on purpose: `save_pretrained` refuses a non-empty directory (the mixin
would replace its config.json), and `from_pretrained` of a path that does not exist is one clear error (the
mixin would take it for a hub id).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from huggingface_hub import ModelHubMixin, snapshot_download
from PIL import Image

from ..artifacts import layout
from ..artifacts.files import refuse_nonempty
from ..artifacts.lora import read_adapter
from ..artifacts.weights import is_lora_dir
from ..artifacts.model_dir import config_json, model_card, model_dir_config, read_config_json, write_model_dir
from ..config import ConfigError, NamiConfig
from ..parts import Parts, build_parts, trained_parts
from .pipeline import Pipeline, SampleResult, lora_base

KEY = "from_pretrained"


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] (N, 3, H, W) images as 8-bit PIL images, rounded exactly as the PNGs `nami sample` writes
    (torchvision's save_image), so a notebook and the command line give the same pixels."""
    pixels = ((images.detach().float().cpu() + 1) / 2).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]


class NamiPipeline(
    ModelHubMixin,
    library_name="nami-kit",
    pipeline_tag="text-to-image",
    paper_url="https://arxiv.org/abs/2503.09242",
    tags=["nami", "rectified-flow", "text-to-image"],
):
    """Prompts -> images with a trained NAMI model.

        pipe = NamiPipeline.from_pretrained("runs/tiny/export/0001")   # or a hub id; .to("cuda") to move
        images = pipe(["a red circle"], steps=10, guidance=5.0, seed=0)  # list of PIL images
        wide = pipe("a red circle", height=32, width=64)                 # pixels, any size on the stage grid
        result = pipe.sample(["a red circle"], keep_stages=True)         # tensors, every stage (SampleResult)

    `steps` is one count for every stage or a list (one per stage); `steps`, `guidance` and `mode` default to
    the model's sampler settings. Prompt i samples with seed + i, as in `nami sample`, so an image depends on
    its seed only. `pipe.pipeline` is the `nami.sampling.Pipeline` (`nami eval`'s scorer takes it).
    """

    def __init__(self, config: NamiConfig, parts: Parts | None = None, training: dict | None = None):
        self.config = config
        parts = parts if parts is not None else build_parts(config, fitted=False)
        for module in (parts.model, parts.text_encoder, parts.bridge):
            module.eval().requires_grad_(False)
        self.parts = parts
        self.training = dict(training or {})  # provenance from config.json: step, source, eval, training config
        self._pipeline: Pipeline | None = None

    @property
    def pipeline(self) -> Pipeline:
        """The sampling pipeline, built once (it may cast the model for a *-true precision, and compile it)."""
        if self._pipeline is None:
            self._pipeline = Pipeline.from_config(self.parts, self.config)
        return self._pipeline

    # ---- sampling -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parts.model.parameters()).device

    def to(self, device: str | torch.device) -> "NamiPipeline":
        self.pipeline.to(device)
        return self

    def _steps(self, steps: int | list[int] | None, mode: str) -> list[int] | None:
        if isinstance(steps, int):
            return [steps] * (1 if mode == "uniform" else self.config.num_stages)
        return None if steps is None else list(steps)

    @torch.no_grad()
    def sample(self, prompts: str | list[str], steps: int | list[int] | None = None, guidance: float | None = None,
               seed: int | list[int] = 0, mode: str | None = None, keep_stages: bool = False,
               latents: torch.Tensor | None = None, height: int | None = None,
               width: int | None = None) -> SampleResult:  # fmt: skip
        """Images in [-1, 1] as tensors (and, with keep_stages, every stage's start, end and prediction).
        `latents`: initial latents (stage 0's or full size) instead of the seeds' noise. `height`, `width`: the
        image size in pixels (default the model's square resolution); both must be multiples of the stage grid
        (autoencoder downsampling x patch x 2^(stages-1)), else one ConfigError line names the nearest."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        mode = mode or self.config.sampler.mode
        return self.pipeline.sample(prompts, self._steps(steps, mode), guidance, seed=seed, mode=mode,
                                    keep_stages=keep_stages, latents=latents, height=height,
                                    width=width)  # fmt: skip

    def __call__(self, prompts: str | list[str], steps: int | list[int] | None = None, guidance: float | None = None,
                 seed: int | list[int] = 0, mode: str | None = None, latents: torch.Tensor | None = None,
                 height: int | None = None, width: int | None = None) -> list[Image.Image]:  # fmt: skip
        """One PIL image per prompt, height x width pixels (default the model's square resolution)."""
        return to_pil(self.sample(prompts, steps, guidance, seed, mode, latents=latents, height=height,
                                  width=width).images)  # fmt: skip

    # ---- LoRA adapters ----------------------------------------------------------------------------------
    def load_lora(self, directory: str | Path, scale: float = 1.0) -> str:
        """Add a LoRA adapter (a directory with adapter_model.safetensors + adapter_config.json, e.g. a LoRA
        run's model directory), active with `scale` beside those loaded before; returns its name."""
        return self.pipeline.load_lora(directory, scale, key="load_lora")

    def fuse_lora(self) -> None:
        """Write the loaded adapters into the weights (`unfuse_lora` restores the base exactly)."""
        self.pipeline.fuse_lora()

    def unfuse_lora(self) -> None:
        self.pipeline.unfuse_lora()

    # ---- the model directory --------------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors of model.safetensors: the MM-DiT (its own weights: loaded adapters are not included unless
        fused into them with `fuse_lora`), and the text encoder when it is trained."""
        from ..models.lora import base_state_dict

        parts = {"model": self.parts.model}
        if self.parts.text_encoder.trainable:
            parts["text_encoder"] = self.parts.text_encoder
        return {f"{name}.{k}": v for name, part in parts.items() for k, v in base_state_dict(part).items()}

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> str | None:
        """Write the model directory (config.json, model.safetensors, bridges.safetensors, README.md) into a new
        or empty `save_directory`; a non-empty one is refused. Hub options (push_to_hub=True, repo_id) as in
        `huggingface_hub.ModelHubMixin.save_pretrained`."""
        refuse_nonempty(Path(save_directory), "save_directory")
        return super().save_pretrained(save_directory, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        data = config_json(self.config, self.training)
        write_model_dir(save_directory, data, self.weights(), self.parts.bridge, key="save_directory")

    def generate_model_card(self, *args, **kwargs):
        return model_card(config_json(self.config, self.training), self._hub_mixin_info.model_card_data)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "NamiPipeline":
        """A model directory (local path, or a hub id when online / cached). Keyword arguments: `overrides`
        (sampler / eval / trainer dotlist items, e.g. ["sampler.steps=[5,5,5]"]; model keys are refused as in
        `nami sample --ckpt DIR`), `device`, and the Hub's (revision, cache_dir, token, local_files_only)."""
        where = str(pretrained_model_name_or_path)
        path = Path(where).expanduser()
        looks_local = path.exists() or where.startswith((".", "/", "~")) or where.count("/") > 1  # hub ids: a/b
        if looks_local:
            if not path.is_dir():
                raise ConfigError(KEY, f"not found: {path} (a model directory written by `nami export`)")
            read_config_json(path, KEY)  # one clear line for a directory that is not a model directory
            where = str(path)
        # Not the mixin's from_pretrained: it passes config.json's keys that share a name with __init__'s
        # parameters ("training", "parts") to the constructor, so a crafted config.json could break loading.
        hub = {name: kwargs.pop(name, default) for name, default in
               (("revision", None), ("cache_dir", None), ("force_download", False), ("local_files_only", False),
                ("token", None))}  # fmt: skip
        return cls._from_pretrained(model_id=where, **hub, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, config=None, overrides: list[str] | tuple = (),
                         device: str | torch.device | None = None) -> "NamiPipeline":  # fmt: skip
        # `config` is the mixin's reading of config.json: the directory is read again below with the kit's checks
        if os.path.isdir(model_id):
            directory = Path(model_id)
        else:
            directory = Path(snapshot_download(
                repo_id=model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                local_files_only=local_files_only, token=token,
                allow_patterns=[layout.MODEL_CONFIG, layout.MODEL_WEIGHTS, layout.BRIDGES, layout.MODEL_CARD,
                                layout.ADAPTER_WEIGHTS, layout.ADAPTER_CONFIG],
            ))  # fmt: skip
        cfg = model_dir_config(directory, None, overrides, KEY)
        if is_lora_dir(directory):  # a LoRA run's model directory: its base, then its adapter
            base = lora_base(cfg, read_adapter(directory, KEY))
            pipe = cls._from_pretrained(model_id=str(base), revision=None, cache_dir=None, force_download=False,
                                        local_files_only=True, token=None, overrides=overrides)  # fmt: skip
            pipe.load_lora(directory)
            pipe.config, pipe.training = cfg, read_config_json(directory, KEY).get("_training") or {}
            return pipe.to(device) if device is not None else pipe
        parts, _ = trained_parts(cfg, directory)
        pipe = cls(cfg, parts, read_config_json(directory, KEY).get("_training"))
        return pipe.to(device) if device is not None else pipe
