"""Model registry: names to model classes, and the builders every caller goes through."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from wavemel._fields import check_field_types

_MODELS: dict[str, type] = {}


def register_model(name: str):
    """Class decorator: register a model family under ``name``.

    The class must provide ``from_size(num_classes, size, sample_rate, **overrides)`` and
    ``from_config(num_classes, config)`` class methods and a ``SIZES`` mapping
    (:class:`ConfiguredModel` gives the first two to a family with one config dataclass).
    """

    def decorator(cls: type) -> type:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = cls
        return cls

    return decorator


def _lookup(name: str) -> type:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name]


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def list_sizes(name: str) -> list[str]:
    """Named sizes of model ``name`` (e.g. ``["tiny", "small", "paper"]``)."""
    return list(_lookup(name).SIZES)


def create_model(
    name: str, num_classes: int, size: str = "small", sample_rate: int = 16000, **overrides: Any
) -> nn.Module:
    """Build a freshly initialised model of a named size; ``overrides`` replace config fields."""
    return _lookup(name).from_size(num_classes, size, sample_rate, **overrides)


def model_from_config(name: str, num_classes: int, config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its ``config_dict()`` (as stored in a checkpoint's JSON)."""
    return _lookup(name).from_config(num_classes, config)


class ConfiguredModel:
    """The builders of a model family with one config dataclass (mixed into its ``nn.Module``).

    The family sets ``Config`` (its config dataclass), ``SIZES`` (named configs),
    ``default_size`` and ``default_sample_rate``, takes ``(num_classes, config)`` in
    ``__init__`` and keeps the resolved config as ``self.config``.
    """

    Config: type
    SIZES: dict[str, Any]
    default_size = "small"
    default_sample_rate = 16000
    config: Any

    @classmethod
    def from_size(
        cls,
        num_classes: int,
        size: str | None = None,
        sample_rate: int | None = None,
        **overrides: Any,
    ) -> nn.Module:
        """A freshly initialised model of a named size; ``overrides`` replace config fields.

        ``size`` and ``sample_rate`` default to the family's ``default_size`` and
        ``default_sample_rate``.
        """
        config = config_for_size(
            cls.Config,
            cls.SIZES,
            size or cls.default_size,
            sample_rate=sample_rate or cls.default_sample_rate,
            **overrides,
        )
        return cls(num_classes, config)

    @classmethod
    def from_config(cls, num_classes: int, config: dict[str, Any]) -> nn.Module:
        """Rebuild from :meth:`config_dict` (as stored in a checkpoint's JSON)."""
        return cls(num_classes, config_from_dict(cls.Config, config))

    def config_dict(self) -> dict[str, Any]:
        """JSON-able config (tuples as lists, front-end sizes resolved)."""
        return config_to_dict(self.config)


def config_for_size(config_cls: type, sizes: dict[str, Any], size: str, **fields: Any) -> Any:
    """The named size's config with ``fields`` replaced; clear errors for unknown size/field."""
    if size not in sizes:
        raise ValueError(f"unknown size {size!r}; available: {', '.join(sizes)}")
    return config_from_dict(config_cls, {**dataclasses.asdict(sizes[size]), **fields})


def config_from_dict(config_cls: type, values: dict[str, Any]) -> Any:
    """Build a config dataclass from a (JSON) dict: lists become tuples.

    Raises:
        ValueError: A key is not a field, or a value has the wrong type for its field
            (``model_config: field 'channels' must be a list of integers, got ...``).
    """
    if not isinstance(values, dict):
        raise ValueError(f"model_config must be a JSON object, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown {config_cls.__name__} field(s) {', '.join(unknown)}; "
            f"valid fields: {', '.join(sorted(known))}"
        )
    check_field_types(config_cls, values, error=ValueError, source="model_config")
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-able dict (tuples as lists); inverts ``config_from_dict``."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
