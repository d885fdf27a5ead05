"""Registries: the names a config may give a component (`bridge.kind: conv1x1`) and what each name builds.

A registry lives at the bottom of the kit (it imports nothing of it), so `nami.config` can check a name
without importing the components. Components register themselves where they are defined
(`@BRIDGES.register("conv1x1")`); `names()` imports the registry's home package first, so the set of names
is the set of components that exist, never a copy kept by hand.

A kind with parameters of its own builds from its own config block: the config section names the kind
(`bridge.kind: mlp`) and, beside it, holds a mapping of that kind's parameters (`bridge.params: {hidden:
128}`). The kind declares them as a dataclass `Params` (types and defaults; a `validate()` that raises
`ConfigError(field, message)` for a bad value), and `Registry.params` parses the mapping into it, naming
the full dotted key (`bridge.params.hidden`) on any failure. Adding a kind with a parameter is therefore
one class in one file: nothing else lists kinds or their parameters.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import import_module
from typing import Any, Callable, Generic, Mapping, TypeVar

from .errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoParams:
    """The parameters of a kind that takes none."""


class Component:
    """Base of a registered kind that is a plain object (a density, a prediction, a grid): `params` holds its
    parsed `Params`; two components are equal when they are the same kind with the same parameters."""

    kind = ""  # set by `Registry.register`
    Params: type = NoParams

    def __init__(self, params: Any = None):
        self.params = self.Params() if params is None else params

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.params == self.params

    def __hash__(self) -> int:
        return hash((type(self), self.params))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


class Registry(Generic[T]):
    """Name -> component for one config key (e.g. `bridge.kind`); `home` is the package that registers, and
    `params_key` the config key of the chosen kind's parameters (e.g. `bridge.params`; None: kinds take none
    from the config)."""

    def __init__(self, key: str, home: str, params_key: str | None = None):
        self.key, self.home, self.params_key = key, home, params_key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make `name` buildable from a config (a registered class learns its name as `kind`)."""

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.key}: {name!r} is registered twice")
            if isinstance(item, type):
                item.kind = name
            self._items[name] = item
            return item

        return add

    def remove(self, name: str) -> None:
        """Forget `name` (tests that register a kind of their own, notebooks that redefine one)."""
        self._items.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order (importing the home package registers them)."""
        import_module(self.home)
        return tuple(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def __getitem__(self, name: str) -> T:
        """What `name` registered; an unknown name is a ConfigError naming this registry's key."""
        if name not in self.names():
            raise ConfigError(self.key, f"unknown value {name!r}; choose one of {', '.join(self.names())}")
        return self._items[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call what `name` registered with these arguments."""
        return self[name](*args, **kwargs)

    def items(self) -> list[tuple[str, Any]]:
        self.names()
        return list(self._items.items())

    # ---- kinds with parameters --------------------------------------------------------------------------
    def params_type(self, name: str) -> type:
        """The dataclass of kind `name`'s parameters (`NoParams` when it declares none)."""
        return getattr(self[name], "Params", NoParams)

    def params(self, name: str, given: Mapping[str, Any] | None = None) -> Any:
        """Kind `name`'s parameters parsed from its config block `given` (missing ones take their defaults)."""
        where = self.params_key or self.key
        return parse_params(self.params_type(name), given, where, f"{self.key}={name}")

    def create(self, name: str, *args: Any, params: Mapping[str, Any] | None = None) -> Any:
        """An instance of kind `name` from its config block: `registered(*args, params=<parsed params>)`."""
        return self[name](*args, params=self.params(name, params))


def plain_params(params: Any) -> dict[str, Any]:
    """A parsed `Params` as a config block (plain values, sequences as lists): what a resolved config holds."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(params).items()}  # fmt: skip


def parse_params(params_type: type, given: Mapping[str, Any] | None, key: str, owner: str) -> Any:
    """`given` parsed into the dataclass `params_type` and validated; every failure is a ConfigError naming
    `key.<parameter>` (an unknown parameter names those `owner` takes)."""
    given = {} if given is None else given
    if not isinstance(given, Mapping):
        raise ConfigError(key, f"must be a mapping of the parameters of {owner}, got {given!r}")
    fields = [f.name for f in dataclasses.fields(params_type)]
    for name in given:
        if name not in fields:
            takes = f"it takes {', '.join(fields)}" if fields else "it takes none"
            raise ConfigError(f"{key}.{name}", f"unknown parameter of {owner}; {takes}")
    hints = typing.get_type_hints(params_type)
    params = params_type(**{name: _typed(value, hints[name], f"{key}.{name}") for name, value in given.items()})
    validate = getattr(params, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as err:  # the kind names its field; the key says where the field lives
            raise ConfigError(f"{key}.{err.key}", err.message) from None
    return params


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _typed(value: Any, hint: Any, key: str) -> Any:
    """`value` checked against a parameter's annotation: bool, int, float (ints accepted), str, their
    optional (`X | None`) and sequence (`tuple[X, ...]`, `list[X]`, held as a tuple) forms; others as given."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        return _typed(value, others[0], key) if len(others) == 1 else value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_typed(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if hint not in _TYPE_NAMES:
        return value
    if isinstance(value, bool) and hint is not bool:  # YAML's true is no number
        raise ConfigError(key, f"must be {_TYPE_NAMES[hint]}, got {value!r}")
    if hint is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, hint):
        raise ConfigError(key, f"must be {_TYPE_NAMES[hint]}, got {value!r}")
    return value


BRIDGES: Registry = Registry("bridge.kind", "nami.bridges", "bridge.params")
TEXT_ENCODERS: Registry = Registry("text_encoder.kind", "nami.models.text")
AUTOENCODERS: Registry = Registry("autoencoder.kind", "nami.models.autoencoder")
TIMESTEP_DENSITIES: Registry = Registry("flow.timestep_density", "nami.flow.densities", "flow.density_params")
PREDICTIONS: Registry = Registry("flow.prediction", "nami.flow.prediction", "flow.prediction_params")
TIMESTEP_GRIDS: Registry = Registry("sampler.timestep_grid", "nami.flow.grids", "sampler.grid_params")
DATA_FORMATS: Registry = Registry("data.format", "data_modules.formats")
# Every registry whose kinds take parameters from a config block of their own
WITH_PARAMS: tuple[Registry, ...] = (BRIDGES, TIMESTEP_DENSITIES, PREDICTIONS, TIMESTEP_GRIDS)
