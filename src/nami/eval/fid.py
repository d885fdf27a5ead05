"""FID as published numbers mean it: the FID Inception network, images prepared as the reference does, and
the Fréchet distance between the two sets' feature Gaussians.

- Network: torch-fidelity's `FeatureExtractorInceptionV3` (the TF-slim Inception of the original FID code,
  2015-12-05, ported weight for weight; torchmetrics' FID uses the same class), its 2048-d pool features. The
  weights come from a local file only: torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` (a plain
  state dict) or the same tensors in a .safetensors. The file is read as data (safetensors, or
  `torch.load(weights_only=True)`), its values checked, and handed to the network from memory.
- Images: 8-bit RGB (PIL `convert("RGB")`, as torch-fidelity reads a folder), resized to 299 x 299 by the
  network itself with TensorFlow 1's bilinear resize (no antialiasing: the reference's, not torchmetrics'
  default), scaled to [-1, 1] by (x - 128) / 128.
- Statistics: the mean and the covariance (n - 1) of the float32 features, in float64. Saved as .npz with
  `mu` and `sigma` (plus `count`), the layout pytorch-fid, clean-fid and TTUR's precomputed statistics use,
  so a published reference statistics file is read as it is.
- Distance: |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)). The last trace is the sum of the square roots
  of the eigenvalues of S1 S2 (what torch-fidelity and torchmetrics compute), obtained here from symmetric
  positive semi-definite matrices of the same non-zero eigenvalues: with features at hand and fewer images
  than feature dimensions, the n x n matrices X1 X2^T (singular values) or X S X^T; else S1^(1/2) S2 S1^(1/2).
  Same value, and no complex round-off (a folder against itself gives 0 to float64 precision).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..config import ConfigError

FEATURES = 2048
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
WEIGHTS_HELP = "torch-fidelity's weights-inception-2015-12-05-6726825d.pth, or its tensors as .safetensors"


def load_inception(path: str | Path, key: str = "--weights") -> torch.nn.Module:
    """The FID Inception network over the weights in `path` (module docstring); a file that is not those
    weights (another network, the wrong shapes, NaN) is one ConfigError line naming `key`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, f"FID Inception weights {path} do not exist ({WEIGHTS_HELP})")
    state = _read_state(path, key)
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
            raise ConfigError(key, f"{path}: {name} is not finite floating-point weights ({tensor.dtype})")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise ConfigError(key, "FID needs torch-fidelity (pip install torch-fidelity==0.4.0)") from None
    buffer = io.BytesIO()
    torch.save(state, buffer)  # the network loads its weights from a file object: ours, tensors only
    buffer.seek(0)
    try:
        return FeatureExtractorInceptionV3("inception-v3-compat", [str(FEATURES)], feature_extractor_weights_path=buffer)
    except RuntimeError as err:  # load_state_dict: missing / unexpected keys or size mismatches
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__
        raise ConfigError(key, f"{path} are not the FID Inception weights ({detail[:160]})") from None


def _read_state(path: Path, key: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a .safetensors file or a torch.save archive (weights_only=True: data only)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch and safetensors raise many kinds for a damaged file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ConfigError(key, f"{path} is not a readable weights file ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(key, f"{path} is not a state dict of tensors ({WEIGHTS_HELP})")
    return state


@dataclass
class FidStatistics:
    """Mean and covariance of a set's Inception features (float64); `features` kept when computed here."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = None

    @classmethod
    def of(cls, features: np.ndarray) -> "FidStatistics":
        features = np.asarray(features, np.float64)
        return cls(features.mean(0), np.cov(features, rowvar=False), len(features), features)

    def save(self, path: Path) -> None:
        """As .npz (mu, sigma, count) to `path` exactly (np.savez would add .npz to a name without it)."""
        with open(path, "wb") as handle:
            np.savez(handle, mu=self.mu, sigma=self.sigma, count=np.int64(self.count))

    @classmethod
    def load(cls, path: Path, key: str = "REFERENCE") -> "FidStatistics":
        """Statistics saved by `save`, pytorch-fid, clean-fid or TTUR (`mu`, `sigma`), read without pickle."""
        try:
            with np.load(path, allow_pickle=False) as data:
                mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
                count = int(data["count"]) if "count" in data.files else 0
        except KeyError as err:
            raise ConfigError(key, f"{path} holds no {err} array (FID statistics are `mu` and `sigma`)") from None
        except (OSError, ValueError) as err:
            raise ConfigError(key, f"{path} is not a readable .npz of FID statistics ({err})") from None
        if mu.shape != (FEATURES,) or sigma.shape != (FEATURES, FEATURES):
            raise ConfigError(key, f"{path}: mu {mu.shape} and sigma {sigma.shape} are not statistics of the "
                                   f"{FEATURES}-d Inception features")  # fmt: skip
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ConfigError(key, f"{path} holds NaN or infinite statistics")
        return cls(mu, sigma, count)


def frechet_distance(a: FidStatistics, b: FidStatistics) -> float:
    """|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)) (module docstring for how the root is taken)."""
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * _trace_sqrt_product(a, b))


def _trace_sqrt_product(a: FidStatistics, b: FidStatistics) -> float:
    """tr((S_a S_b)^(1/2)) = sum of the square roots of the eigenvalues of S_a S_b, all real and >= 0."""
    def centred(s: FidStatistics) -> np.ndarray | None:
        if s.features is None or s.count >= FEATURES:
            return None
        return (s.features - s.mu) / np.sqrt(s.count - 1)  # S = X^T X

    xa, xb = centred(a), centred(b)
    if xa is not None and xb is not None:  # S_a S_b shares its non-zero eigenvalues with (Xa Xb^T)(Xa Xb^T)^T
        return float(np.linalg.svd(xa @ xb.T, compute_uv=False).sum())
    if xa is not None or xb is not None:  # S_a X^T X: the eigenvalues of X S_a X^T (n x n)
        x, other = (xa, b.sigma) if xa is not None else (xb, a.sigma)
        return float(np.sqrt(np.clip(np.linalg.eigvalsh(x @ other @ x.T), 0, None)).sum())
    values, vectors = np.linalg.eigh(a.sigma)
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ b.sigma @ root), 0, None)).sum())


def image_files(folder: str | Path, key: str = "DIR") -> list[Path]:
    """Every .png / .jpg / .jpeg / .webp below `folder`, sorted (hidden files, such as partial writes, left
    out); fewer than two is one line naming `key`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(key, f"image folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))  # fmt: skip
    return check_image_count(files, folder, key)


def check_image_count(files: list[Path], folder: Path, key: str) -> list[Path]:
    if not files:
        raise ConfigError(key, f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) < 2:
        raise ConfigError(key, f"{folder} holds one image; FID needs at least two (a covariance)")
    return files


def read_rgb(path: Path, key: str = "DIR") -> torch.Tensor:
    """(3, H, W) uint8, as torch-fidelity reads an image file (PIL, converted to RGB)."""
    try:
        with Image.open(path) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    except (OSError, UnidentifiedImageError) as err:
        raise ConfigError(key, f"{path} is not a readable image ({err})") from None


def same_size_batches(images: Iterable[torch.Tensor], batch_size: int) -> Iterator[torch.Tensor]:
    """(B, 3, H, W) uint8 batches of consecutive images of one size (a new size starts a new batch)."""
    batch: list[torch.Tensor] = []
    for image in images:
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.stack(batch)


@torch.no_grad()
def inception_features(network: torch.nn.Module, images: Iterable[Any], batch_size: int = 32,
                       device: str | torch.device = "cpu") -> np.ndarray:  # fmt: skip
    """(N, 2048) float32 features of images: (3, H, W) uint8 tensors, or anything `to_rgb_uint8` takes."""
    from .detection import to_rgb_uint8

    def as_uint8(image) -> torch.Tensor:
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3:
            return image
        return torch.from_numpy(to_rgb_uint8(image).copy()).permute(2, 0, 1)

    network = network.to(device)
    out = [network(batch.to(device))[0].cpu() for batch in same_size_batches(map(as_uint8, images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, FEATURES), np.float32)


def folder_statistics(files: list[Path], network: torch.nn.Module, batch_size: int = 32,
                      device: str | torch.device = "cpu", key: str = "DIR") -> FidStatistics:  # fmt: skip
    """Statistics of image files (`image_files`, or the images a sample directory's index lists)."""
    return FidStatistics.of(inception_features(network, (read_rgb(p, key) for p in files), batch_size, device))


def reference_statistics(reference: str | Path, network: torch.nn.Module, batch_size: int = 32,
                         device: str | torch.device = "cpu", key: str = "REFERENCE") -> FidStatistics:  # fmt: skip
    """A reference set: precomputed statistics (.npz) or a folder of images."""
    reference = Path(reference)
    if reference.suffix == ".npz":
        if not reference.is_file():
            raise ConfigError(key, f"FID statistics {reference} do not exist")
        return FidStatistics.load(reference, key)
    return folder_statistics(image_files(reference, key), network, batch_size, device, key)

