"""A registry builds a kind from its config block: the kind's `Params` dataclass, parsed and validated, with
every failure a ConfigError naming the full dotted key."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from nami.config import ConfigError
from nami.registry import Component, Registry, plain_params


@dataclass(frozen=True)
class ShapeParams:
    width: int = 4
    scale: float = 1.0
    label: str | None = None
    sizes: tuple[int, ...] = (1, 2)
    fast: bool = False

    def validate(self) -> None:
        if self.width > 8:
            raise ConfigError("width", f"must be <= 8, got {self.width}")


class Shape(Component):
    Params = ShapeParams


@pytest.fixture
def shapes():
    reg = Registry("shape.kind", "nami.registry", "shape.params")  # a home package that registers nothing
    reg.register("box")(Shape)
    reg.register("plain")(type("Plain", (Component,), {}))
    return reg


def test_a_block_parses_into_the_kinds_params_with_defaults(shapes):
    box = shapes.create("box", params={"width": 6, "scale": 2, "label": None, "sizes": [3, 4], "fast": True})
    assert isinstance(box, Shape) and box.kind == "box"
    assert box.params == ShapeParams(6, 2.0, None, (3, 4), True) and isinstance(box.params.scale, float)
    assert shapes.create("box") == Shape(ShapeParams())  # an empty block: every default
    assert plain_params(box.params) == {"width": 6, "scale": 2.0, "label": None, "sizes": [3, 4], "fast": True}


@pytest.mark.parametrize("kind, block, key, words", [
    ("box", {"width": 9}, "shape.params.width", "must be <= 8"),  # the kind's own check, prefixed
    ("box", {"width": True}, "shape.params.width", "must be an integer"),  # YAML's true is no number
    ("box", {"width": 2.5}, "shape.params.width", "must be an integer"),
    ("box", {"scale": "x"}, "shape.params.scale", "must be a number"),
    ("box", {"sizes": 3}, "shape.params.sizes", "must be a list"),
    ("box", {"sizes": [1, "a"]}, "shape.params.sizes[1]", "must be an integer"),
    ("box", {"fast": 1}, "shape.params.fast", "must be true or false"),
    ("box", {"depth": 1}, "shape.params.depth", "unknown parameter of shape.kind=box; it takes width, scale, label"),
    ("plain", {"width": 1}, "shape.params.width", "unknown parameter of shape.kind=plain; it takes none"),
    ("box", [1], "shape.params", "must be a mapping"),
    ("round", {}, "shape.kind", "unknown value 'round'; choose one of box, plain"),
])  # fmt: skip
def test_every_bad_block_names_the_key(shapes, kind, block, key, words):
    with pytest.raises(ConfigError) as err:
        shapes.create(kind, params=block)
    assert err.value.key == key and words in err.value.message, str(err.value)


def test_a_kind_registers_once_and_can_be_removed(shapes):
    with pytest.raises(ValueError, match="registered twice"):
        shapes.register("box")(type("Other", (Component,), {}))
    shapes.remove("box")
    assert "box" not in shapes and shapes.names() == ("plain",)
