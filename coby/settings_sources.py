"""The sources of settings' raw values, and their coercion to each setting's declared type.

``Settings.load`` (``coby/config.py``) reads three sources: a TOML file, the environment and
CLI flags. Their raw values (strings from the environment and the CLI, TOML values from the
file) are read and coerced here. Which settings exist, with their defaults, help and checks,
is declared only in ``coby/config.py``, which passes in what coercion needs (the setting's
name and type hint, and how an item of a list setting is spelt canonically): config imports
this module, never the reverse.
"""

from __future__ import annotations

import math
import tomllib
import typing
from pathlib import Path
from typing import Any, Callable

from coby.errors import ConfigError


def read_toml(path: Path) -> dict[str, Any]:
    """The raw values of a TOML config file; a ``[coby]`` table is accepted as well as top-level keys."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    if isinstance(raw.get("coby"), dict):
        raw = {**{k: v for k, v in raw.items() if k != "coby"}, **raw["coby"]}
    return raw


def coerce(name: str, hint: Any, value: Any, source: str,
           canonical_item: Callable[[str], str] | None = None) -> Any:
    """Coerce a raw value (string from env/CLI, or a TOML value) to the setting's type ``hint``.

    ``canonical_item`` spells one item of a list setting canonically, before duplicates are dropped.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    optional = origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "null"}):
            return None
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in {"1", "true", "yes", "on"}:
                return True
            if s in {"0", "false", "no", "off"}:
                return False
            raise ValueError("expected true or false")
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            out = float(value)
            if not math.isfinite(out):
                raise ValueError("expected a finite number")
            return out
        if hint is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError("expected a string")
            return str(value)
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            items = [str(i).strip() for i in items if str(i).strip()]
            if canonical_item is not None:
                items = [canonical_item(i) for i in items]
            return tuple(dict.fromkeys(items))
        if origin is dict and args[1] is not float:  # dict[str, str] / dict[str, dict[str, str]]
            return _parse_str_table(value, nested=typing.get_origin(args[1]) is dict)
        if origin is dict:
            if isinstance(value, str):  # "BTC=10,ETH=1"
                pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
                if any(len(p) != 2 for p in pairs):
                    raise ValueError("expected KEY=VALUE pairs separated by commas")
                value = {k.strip(): v.strip() for k, v in pairs}
            if not isinstance(value, dict):
                raise ValueError("expected a table of KEY = number")
            return {str(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid setting {name}={value!r} from {source}: {e}") from None
    raise ConfigError(f"setting {name}: unsupported type {hint!r}")  # pragma: no cover - programming error


def _parse_str_table(value: Any, nested: bool) -> dict[str, Any]:
    """``KEY=VALUE,...`` (nested: ``OUTER:KEY=VALUE,...``) or a TOML table -> dict of strings."""
    if isinstance(value, str):
        out: dict[str, Any] = {}
        for item in (p.strip() for p in value.split(",")):
            if not item:
                continue
            key, eq, val = item.partition("=")
            if not eq:
                raise ValueError("expected KEY=VALUE pairs separated by commas")
            if nested:
                outer, colon, key = key.partition(":")
                if not colon:
                    raise ValueError("expected VENUE:KEY=VALUE pairs separated by commas")
                out.setdefault(outer.strip(), {})[key.strip()] = val.strip()
            else:
                out[key.strip()] = val.strip()
        return out
    if not isinstance(value, dict):
        raise ValueError("expected a table")
    if nested:
        if not all(isinstance(v, dict) for v in value.values()):
            raise ValueError("expected a table of tables")
        return {str(k): {str(kk): str(vv) for kk, vv in v.items()} for k, v in value.items()}
    return {str(k): str(v) for k, v in value.items()}
