"""Hyperparameters declared as data.

An algorithm (or a config section) is a dataclass whose fields are made with :func:`hparam`.
Each field carries its range, choices and help text, so the CLI validates it and the GUI
builds a form from it without knowing the algorithm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from workbench.core.errors import ConfigError


@dataclass(frozen=True)
class HParamSpec:
    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    log_scale: bool = False
    label: str = ""

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    def range_text(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        low, high = self._format(self.low), self._format(self.high)
        if low is not None and high is not None:
            return f"between {low} and {high}"
        if low is not None:
            return f"at least {low}"
        if high is not None:
            return f"at most {high}"
        return ""

    def _format(self, bound: float | None) -> str | None:
        if bound is None:
            return None
        return f"{int(bound):,}" if self.type is int else f"{bound:g}"

    def validate(self, value: Any, path: str) -> Any:
        """Coerce a value read from TOML, flags or a form; raise ConfigError naming `path` if it is invalid."""
        where = f"{path}.{self.name}" if path else self.name
        try:
            if self.type is bool:
                if isinstance(value, str):
                    lowered = value.strip().lower()
                    if lowered not in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
                        raise ValueError(value)
                    value = lowered in {"true", "1", "yes", "on"}
                elif not isinstance(value, bool):  # 7 is not a boolean: true/false, or the flag forms as text
                    raise ValueError(value)
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(value)
                value = int(value)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError(value)
                value = float(value)
            elif self.type is str:
                if not isinstance(value, str):
                    raise ValueError(value)
        except (TypeError, ValueError):
            raise ConfigError(where, f"expected {self.type.__name__}, got {value!r}") from None
        if self.choices and value not in self.choices:
            raise ConfigError(where, f"{value!r} is not allowed; use {self.range_text()}")
        if self.type in (int, float):
            if value != value:  # NaN
                raise ConfigError(where, "NaN is not a valid value")
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise ConfigError(where, f"{value!r} is out of range; use a value {self.range_text()}")
        return value


def hparam(default: Any, help: str, *, low: float | None = None, high: float | None = None,
           choices: tuple | None = None, log_scale: bool = False, label: str = "") -> Any:
    """A dataclass field carrying its range and help text."""
    meta = {"help": help, "low": low, "high": high, "choices": choices, "log_scale": log_scale, "label": label}
    return field(default=default, metadata={"hparam": meta})


def specs(cls) -> list[HParamSpec]:
    """The declared hyperparameters of a dataclass type, in declaration order."""
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("hparam")
        if meta is None:
            continue
        out.append(HParamSpec(name=f.name, type=hints[f.name], default=f.default, **meta))
    return out


def build(cls, values: dict[str, Any] | None, path: str = ""):
    """Make an instance of `cls` from a dict, validating every field and rejecting unknown keys."""
    values = dict(values or {})
    known = {s.name: s for s in specs(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(where, f"unknown setting; known settings are {', '.join(known) or 'none'}")
    kwargs = {name: spec.validate(values[name], path) for name, spec in known.items() if name in values}
    return cls(**kwargs)


def to_dict(instance) -> dict[str, Any]:
    return {s.name: getattr(instance, s.name) for s in specs(type(instance))}
