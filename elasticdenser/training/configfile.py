"""One config system for every trainer: a dataclass of hyper-parameters, read from YAML/TOML or
``key=value`` overrides with clear errors, written next to its checkpoints.

Subclasses are dataclasses that define ``validate()`` and set ``KIND`` (how errors name the
config), ``FILENAME`` (what :meth:`ConfigFile.save` writes into a directory) and, for renamed
keys, ``RENAMED`` (old key -> the hint an old config gets).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Sequence, Type, TypeVar

from elasticdenser.atomic import write_text
from elasticdenser.errors import InvalidInputError, MissingFileError

__all__ = ["ConfigFile"]

C = TypeVar("C", bound="ConfigFile")


class ConfigFile:
    KIND: ClassVar[str] = "config"
    FILENAME: ClassVar[str] = "config.yaml"
    RENAMED: ClassVar[Dict[str, str]] = {}

    def validate(self: C) -> C:
        return self

    def check_bounds(self, names: Sequence[str], minimum: float, strict: bool = False) -> None:
        """Each named value must be >= ``minimum`` (``> minimum`` with ``strict``); the error names the key."""
        for name in names:
            value = getattr(self, name)
            if float(value) < minimum or (strict and float(value) == minimum):
                raise InvalidInputError(f"{self.KIND}: {name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: Type[C], data: Mapping[str, Any]) -> C:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        for old in unknown:
            if old in cls.RENAMED:
                raise InvalidInputError(f"{cls.KIND}: {cls.RENAMED[old]}")
        if unknown:
            raise InvalidInputError(f"{cls.KIND}: unknown key(s) {', '.join(unknown)}")
        return cls(**{k: _coerce(known[k], v, cls.KIND) for k, v in data.items()}).validate()

    @classmethod
    def load(cls: Type[C], path: "str | Path") -> C:
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"{cls.KIND} not found: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            import tomllib

            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise InvalidInputError(f"{cls.KIND} {path}: invalid TOML: {exc}") from None
        else:
            import yaml

            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" line {mark.line + 1}" if mark is not None else ""
                raise InvalidInputError(f"{cls.KIND} {path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(data, dict):
            raise InvalidInputError(f"{cls.KIND} {path}: expected a mapping at the top level")
        return cls.from_dict(data)

    def save(self, path: "str | Path") -> Path:
        import yaml

        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / self.FILENAME
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    def override(self: C, assignments: Sequence[str]) -> C:
        """Apply ``key=value`` strings (value parsed as YAML), e.g. ``steps=200``, ``points=[...]``."""
        import yaml

        data = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise InvalidInputError(f"{self.KIND} override {item!r}: expected key=value")
            key, value = item.split("=", 1)
            key = key.strip().replace("-", "_")
            if key not in data:
                raise InvalidInputError(f"{self.KIND}: unknown key {key!r}")
            try:
                data[key] = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise InvalidInputError(f"{self.KIND} override {item!r}: invalid value ({exc})") from None
        return type(self).from_dict(data)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes).validate()


def _coerce(f: dataclasses.Field, value: Any, kind: str) -> Any:
    """Light type coercion for values that came from YAML/TOML/CLI strings."""
    if value is None:
        return None
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() in ("true", "yes", "1", "on"):
                return True
            if value.lower() in ("false", "no", "0", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise InvalidInputError(f"{kind}: {f.name} must be a boolean, got {value!r}")
    if default is None and str(f.type) in ("Optional[int]", "Optional[float]"):
        default = 0 if str(f.type) == "Optional[int]" else 0.0  # typed by the annotation
    if isinstance(default, (int, float)):
        what = "an integer" if isinstance(default, int) else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InvalidInputError(f"{kind}: {f.name} must be {what}, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise InvalidInputError(f"{kind}: {f.name} must be {what}, got {value!r}") from None
        if isinstance(default, float):
            return number
        if number != int(number):
            raise InvalidInputError(f"{kind}: {f.name} must be an integer, got {value!r}")
        return int(number)
    return value
