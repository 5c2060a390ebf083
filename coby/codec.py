"""The JSON form of coby's models: one encoding for the cache, the API, spill files and the client.

``dumps(obj)`` gives compact JSON bytes (orjson; datetimes as RFC 3339 UTC strings,
dict keys such as bucket prices as strings, book levels as ``[price, size]`` pairs for every
venue, a venue's order counts per level, when it sends them, in ``bid_counts`` / ``ask_counts``).
``to_dict`` gives the same as Python objects. ``from_dict(cls, data)`` rebuilds a model from that
form, so a client gets back the very dataclasses the daemon uses.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from datetime import datetime
from functools import lru_cache
from typing import Any, TypeVar

import orjson

from coby import models

T = TypeVar("T")
_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z | orjson.OPT_PASSTHROUGH_DATACLASS

#: model classes by their JSON ``type`` name
MODEL_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in vars(models).values()
    if isinstance(cls, type) and dataclasses.is_dataclass(cls)
}


@lru_cache(maxsize=None)
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _default(obj: Any) -> Any:
    """Models as JSON: a book level as ``[price, size]`` for every venue - one shape, compact, and
    ten times faster to encode than an object per level. A venue that sends order counts per level
    (bitfinex) has them in a book's optional ``bid_counts`` / ``ask_counts`` (one per level), not
    in the level. Every other model as an object of its fields."""
    cls = type(obj)
    if cls is models.OrderBookSnapshot:  # the hot one: one callback per book, not per level
        bids, asks = obj.bids, obj.asks
        out = {"symbol": obj.symbol, "exchange": obj.exchange, "timestamp": obj.timestamp,
               "bids": bids.pairs(), "asks": asks.pairs(),
               "sequence_id": obj.sequence_id, "received_at": obj.received_at}
        if bids.counts is not None or asks.counts is not None:
            out["bid_counts"], out["ask_counts"] = bids.count_list(), asks.count_list()
        return out
    if cls is models.PriceLevel:
        return (obj.price, obj.size)
    if cls is models.Levels:
        return obj.pairs()
    if cls is models.MergedLevels:  # a consolidated side: its levels' dicts in one pass, no callback per level
        return obj.json_form()
    if dataclasses.is_dataclass(obj):
        return {name: getattr(obj, name) for name in _field_names(cls)}
    raise TypeError(f"cannot encode {cls.__name__}")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default, option=_OPTS)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def to_dict(obj: Any) -> Any:
    """A model (or a structure of models) as JSON-ready Python objects."""
    return orjson.loads(dumps(obj))


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", object)):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if hint is datetime:
        return models.ensure_utc(datetime.fromisoformat(value.replace("Z", "+00:00"))) \
            if isinstance(value, str) else models.utc_from_ms(value)
    if hint is float:
        return float(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if hint is models.Levels:
        return models.Levels.of(value)  # [[price, size(, count)], ...]
    if hint is models.MergedLevels:
        return models.MergedLevels.of(value)  # [{"price", "size", "venues"}, ...]
    if hint is models.PriceLevel and isinstance(value, (list, tuple)):
        return models.PriceLevel(float(value[0]), float(value[1]), value[2] if len(value) > 2 else None)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value)
    if origin is tuple:
        item = args[0] if args else Any
        return tuple(_convert(item, v) for v in value)
    if origin is list:
        item = args[0] if args else Any
        return [_convert(item, v) for v in value]
    if origin is dict:
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k): _convert(vt, v) for k, v in value.items()}
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a model from its JSON form (unknown keys are ignored, so newer servers stay readable)."""
    hints = _hints(cls)
    kwargs = {f.name: _convert(hints[f.name], data[f.name])
              for f in dataclasses.fields(cls) if f.name in data}  # type: ignore[arg-type]
    if cls is models.OrderBookSnapshot:
        for side, counts in (("bids", data.get("bid_counts")), ("asks", data.get("ask_counts"))):
            if counts and side in kwargs:
                kwargs[side] = models.Levels(kwargs[side].prices, kwargs[side].sizes, counts)
    return cls(**kwargs)
