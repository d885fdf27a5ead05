"""Decoding: every PIL mode to RGB, size limits before decoding, resize + crop, scale to [-1, 1]."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules.decode import image_tensor
from data_modules.records import Skip

from .data_fixtures import bomb_png, encode, mode_images

RED, BLUE, WHITE = [1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, 1.0]


def _pixel(x: torch.Tensor, row: int, col: int) -> list[float]:
    return [round(v, 2) for v in x[:, row, col].tolist()]


def test_unusual_modes_become_rgb_in_range():
    images = mode_images()
    out = {name: image_tensor(data, 16) for name, data in images.items()}
    for name, x in out.items():
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32, name
        assert x.min() >= -1.0 and x.max() <= 1.0, name
    assert _pixel(out["p.png"], 8, 2) == BLUE and _pixel(out["p.png"], 8, 13) == WHITE  # transparent -> white
    assert _pixel(out["rgba.png"], 8, 8) == [-1.0, 1.0, -1.0]
    assert _pixel(out["cmyk.jpg"], 8, 8) == RED
    assert _pixel(out["i16.png"], 8, 8) == WHITE  # 65535 is white, not clipped garbage
    la = out["la.png"]  # grey at alpha 128 over white: halfway between the grey and white
    grey = out["l.png"]
    assert torch.allclose(la, (grey + 1.0) / 2, atol=0.03)
    assert torch.equal(la[0], la[1]) and torch.equal(la[1], la[2])


def test_sixteen_bit_grey_is_scaled_not_clipped():
    arr = np.full((20, 20), 32896, dtype=np.uint16)  # 128 * 257: mid grey
    x = image_tensor(encode(Image.fromarray(arr)), 8)
    assert torch.allclose(x, torch.full_like(x, 128 / 127.5 - 1), atol=1e-6)


def test_size_limits_reject_before_decoding():
    with pytest.raises(Skip) as err:
        image_tensor(bomb_png(30_000, 30_000), 32)  # header only: PIL's own bomb guard
    assert err.value.reason == "too_large"
    with pytest.raises(Skip) as err:
        image_tensor(bomb_png(3_000, 3_000), 32, max_pixels=1_000_000)  # our limit, pixel data never read
    assert err.value.reason == "too_large"
    with pytest.raises(Skip) as err:
        image_tensor(encode(Image.new("RGB", (40, 10))), 32, min_size=16)
    assert err.value.reason == "too_small"
    for data, reason in (
        (b"", "empty_image"),
        (None, "missing_image"),
        (b"\x89PNG\r\n\x1a\n junk", "undecodable"),
    ):
        with pytest.raises(Skip) as err:
            image_tensor(data, 32)
        assert err.value.reason == reason


def test_truncated_pixel_data_is_undecodable():
    data = encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG"
    )
    with pytest.raises(Skip) as err:
        image_tensor(data[: len(data) // 2], 32)
    assert err.value.reason == "undecodable"


def test_shorter_side_resized_then_cropped():
    # 96 x 32: red | white | blue thirds. The centre crop is the white third; random crops vary, by seed.
    img = Image.new("RGB", (96, 32), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 32, 32))
    img.paste((0, 0, 255), (64, 0, 96, 32))
    data = encode(img)
    centre = image_tensor(data, 16)
    assert centre.shape == (3, 16, 16) and _pixel(centre, 8, 8) == WHITE
    crops = [image_tensor(data, 16, random.Random(s)) for s in range(12)]
    assert len({tuple(c[:, 8, 8].tolist()) for c in crops}) > 1
    assert torch.equal(image_tensor(data, 16, random.Random(3)), crops[3])
    big = image_tensor(encode(img.resize((960, 320), Image.Resampling.NEAREST)), 16)  # 10x larger: same crop
    assert torch.allclose(
        big[:, :, 1:-1], centre[:, :, 1:-1], atol=0.02
    )  # edges see neighbours' filter support


def test_exif_orientation_is_applied():
    # Stored landscape, left red / right blue; EXIF orientation 6 displays it rotated 90 degrees clockwise,
    # so red ends up on top.
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    x = image_tensor(encode(img, "JPEG", quality=95, exif=exif.tobytes()), 32)
    top, bottom = x[:, 2, 16], x[:, 29, 16]
    assert top[0] > 0.8 and top[2] < -0.8 and bottom[2] > 0.8 and bottom[0] < -0.8
