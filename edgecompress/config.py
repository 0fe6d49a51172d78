"""Base class of every stage config: a dataclass that validates itself and round-trips JSON."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

from edgecompress.errors import ConfigError

T = TypeVar("T", bound="Config")


@dataclasses.dataclass
class Config:
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the bad field and its allowed values."""

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.to_dict() if isinstance(v, Config) else (list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}; fields: {sorted(names)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def check_choice(cls_name: str, field: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{cls_name}.{field}={value!r}; choose one of {sorted(choices)}")


def check_range(cls_name: str, field: str, value: float, lo: float, hi: float, *, hi_open: bool = False) -> None:
    ok = lo <= value < hi if hi_open else lo <= value <= hi
    if not ok:
        br = ")" if hi_open else "]"
        raise ConfigError(f"{cls_name}.{field}={value!r} is outside [{lo}, {hi}{br}; pass a value inside it")
