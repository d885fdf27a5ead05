"""Registries: the names a config may give a component (`bridge.kind: conv1x1`) and what each name builds.

A registry lives at the bottom of the kit (it imports nothing of it), so `nami.config` can check a name
without importing the components. Components register themselves where they are defined
(`@BRIDGES.register("conv1x1")`); `names()` imports the registry's home package first, so the set of names
is the set of components that exist, never a copy kept by hand.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> component for one config key (e.g. `bridge.kind`); `home` is the package that registers."""

    def __init__(self, key: str, home: str):
        self.key, self.home = key, home
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make `name` buildable from a config."""

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.key}: {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order (importing the home package registers them)."""
        import_module(self.home)
        return tuple(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def __getitem__(self, name: str) -> T:
        if name not in self.names():
            raise KeyError(f"{self.key}: unknown value {name!r}; choose one of {', '.join(self.names())}")
        return self._items[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call what `name` registered; an unknown name is a ConfigError naming this registry's key."""
        if name not in self.names():
            raise ConfigError(self.key, f"unknown value {name!r}; choose one of {', '.join(self.names())}")
        return self._items[name](*args, **kwargs)

    def items(self) -> list[tuple[str, Any]]:
        self.names()
        return list(self._items.items())


BRIDGES: Registry = Registry("bridge.kind", "nami.bridges")
TEXT_ENCODERS: Registry = Registry("text_encoder.kind", "nami.models.text")
AUTOENCODERS: Registry = Registry("autoencoder.kind", "nami.models.autoencoder")
TIMESTEP_DENSITIES: Registry = Registry("flow.timestep_density", "nami.flow.densities")
PREDICTIONS: Registry = Registry("flow.prediction", "nami.flow.prediction")
TIMESTEP_GRIDS: Registry = Registry("sampler.timestep_grid", "nami.flow.grids")
DATA_FORMATS: Registry = Registry("data.format", "data_modules.formats")
