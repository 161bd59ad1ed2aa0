"""Named plug-ins: demonstration selectors and reference rankers, each one class registered by name.

A plug-in class declares its parameters as dataclass fields (the decorator makes a plain class a frozen
dataclass). The runner builds it from a condition's ``params`` with :meth:`Registry.build`, which checks
names and types, fills defaults (from the profile where the class says so) and calls the class's own
``validate()``. The built object's fields enter the result's cache key, so a new parameter changes
the key without any code in the runner.

>>> from lrgd.rec.select import register_selector
>>> @register_selector("every-other")  # doctest: +SKIP
... class EveryOther:
...     stride: int = 2  # a parameter: also a CLI option --stride, and part of the cache key
...     def select(self, runner, cfg, user, k, history): ...
"""

from __future__ import annotations

import importlib
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, fields

from lrgd.errors import ConfigError

#: every registered name → the kind of plug-in holding it (names are unique across registries)
_TAKEN: dict[str, str] = {}
_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class Param:
    """One declared parameter of a plug-in: name, Python type, default and help text."""

    name: str
    type: type
    default: object
    help: str


class Registry:
    """Name → plug-in class, for one ``kind`` of plug-in.

    ``plugins`` are modules that register classes of this kind from outside the module holding the
    registry (imported on first use, so that importing the registry stays cheap and acyclic).
    """

    def __init__(self, kind: str, plugins: tuple[str, ...] = ()) -> None:
        self.kind, self._plugins, self._classes = kind, plugins, {}
        self._loaded = not plugins

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: register the class under ``name`` (a frozen dataclass; ``cls.name = name``)."""

        def deco(cls: type) -> type:
            if name in _TAKEN and _TAKEN[name] != f"{self.kind}:{cls.__module__}.{cls.__qualname__}":
                raise ConfigError(f"{name!r} is already registered as a {_TAKEN[name].split(':')[0]}")
            if "__dataclass_fields__" not in cls.__dict__:  # a plain class, or a subclass adding fields
                cls = dataclass(frozen=True)(cls)
            for p in _params(cls):
                if p.type not in _SCALARS.values():
                    raise ConfigError(
                        f"{cls.__qualname__}.{p.name}: a parameter must be int, float, str or bool"
                    )
            cls.name = name
            _TAKEN[name] = f"{self.kind}:{cls.__module__}.{cls.__qualname__}"
            self._classes[name] = cls
            return cls

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a toy plug-in clean up with this)."""
        self._classes.pop(name, None)
        _TAKEN.pop(name, None)

    def _load(self) -> dict[str, type]:
        if not self._loaded:
            self._loaded = True
            for module in self._plugins:
                importlib.import_module(module)
        return self._classes

    def names(self) -> tuple[str, ...]:
        return tuple(self._load())

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._load())

    def get(self, name: str) -> type:
        """The class registered as ``name``; :class:`ConfigError` listing the choices otherwise."""
        classes = self._load()
        if name not in classes:
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {', '.join(classes)}")
        return classes[name]

    def params(self, name: str) -> tuple[Param, ...]:
        return _params(self.get(name))

    def build(self, name: str, params: Mapping[str, object] = (), profile=None):
        """An instance of ``name`` with ``params`` (others at their defaults), checked and validated.

        A default may come from the profile: the class maps field → ``"section.attribute"`` in its
        ``profile_defaults`` class attribute.
        """
        cls = self.get(name)
        declared = {p.name: p for p in _params(cls)}
        params = dict(params)
        unknown = sorted(set(params) - set(declared))
        if unknown:
            valid = ", ".join(declared) or "none"
            raise ConfigError(
                f"{self.kind} {name!r} takes no parameter {', '.join(unknown)}; its parameters: {valid}"
            )
        values = {}
        for p in declared.values():
            if p.name in params:
                values[p.name] = _checked(name, p, params[p.name])
            elif profile is not None and p.name in getattr(cls, "profile_defaults", {}):
                section, attr = cls.profile_defaults[p.name].split(".")
                values[p.name] = getattr(getattr(profile, section), attr)
        obj = cls(**values)
        if hasattr(obj, "validate"):
            obj.validate()
        return obj


def _params(cls: type) -> tuple[Param, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out.append(Param(f.name, hints.get(f.name, type(default)), default, f.metadata.get("help", "")))
    return tuple(out)


def _checked(plugin: str, p: Param, value: object) -> object:
    ok = isinstance(value, p.type) and not (p.type is not bool and isinstance(value, bool))
    if p.type is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{plugin}: parameter {p.name} must be {p.type.__name__}, got {value!r}")
    return value


def all_params(*registries: Registry) -> dict[str, Param]:
    """Every parameter declared by any plug-in of ``registries`` (the CLI turns each into an option)."""
    out: dict[str, Param] = {}
    for reg in registries:
        for name in reg:
            for p in reg.params(name):
                out.setdefault(p.name, p)
    return out
