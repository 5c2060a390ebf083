"""The sources of settings' raw values, and their coercion to each setting's declared type.

``Settings.load`` (``coby/config.py``) reads three sources: a TOML file, the environment and
CLI flags. Their raw values (strings from the environment and the CLI, TOML values from the
file) are read and coerced here. Which settings exist, with their defaults, help and checks,
is declared only in ``coby/config.py``, which passes in what coercion needs (the setting's
name and type hint, and how an item of a list setting is spelt canonically): config imports
this module, never the reverse.
"""

from __future__ import annotations

import json
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
        if origin is dict:
            nested = typing.get_origin(args[1]) is dict
            return _parse_map(value, nested=nested, number=args[1] is float)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid setting {name}={value!r} from {source}: {e}") from None
    raise ConfigError(f"setting {name}: unsupported type {hint!r}")  # pragma: no cover - programming error


def _parse_map(value: Any, nested: bool, number: bool) -> dict[str, Any]:
    """A map setting from any source: a TOML table, a JSON object (``{"*": "http://..."}``), or
    ``KEY=VALUE,...`` pairs (nested: ``OUTER:KEY=VALUE,...``). Values are strings, or numbers
    when ``number``; nested maps are tables of such strings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"not valid JSON ({e.msg} at character {e.pos}); use a JSON object or "
                                 "KEY=VALUE pairs separated by commas") from None
        else:
            value = _parse_pairs(text, nested)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object or a table, or KEY=VALUE pairs separated by commas")
    if not nested:
        return {str(k): _map_value(k, v, number) for k, v in value.items()}
    out: dict[str, Any] = {}
    for k, inner in value.items():
        if not isinstance(inner, dict):
            raise ValueError(f"value for {k!r} must be a table of KEY = VALUE, got {inner!r}")
        out[str(k)] = {str(kk): _map_value(kk, vv, number) for kk, vv in inner.items()}
    return out


def _map_value(key: Any, v: Any, number: bool) -> Any:
    if number:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError(f"value for {key!r} must be a number, got {v!r}")
        try:
            return float(v)
        except ValueError:
            raise ValueError(f"value for {key!r} must be a number, got {v!r}") from None
    if not isinstance(v, str):
        raise ValueError(f"value for {key!r} must be a string, got {v!r}")
    return v


def _parse_pairs(text: str, nested: bool) -> dict[str, Any]:
    """``KEY=VALUE,...`` (nested: ``OUTER:KEY=VALUE,...``); a value may itself contain ``=``."""
    out: dict[str, Any] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{item!r}: expected KEY=VALUE pairs separated by commas, or a JSON object")
        if nested:
            outer, colon, key = key.partition(":")
            if not colon:
                raise ValueError(f"{item!r}: expected VENUE:KEY=VALUE pairs separated by commas, or a JSON object")
            out.setdefault(outer.strip(), {})[key.strip()] = val.strip()
        else:
            out[key.strip()] = val.strip()
    return out
