"""Which collector shard owns a symbol: rendezvous (highest random weight) hashing.

``owner(symbol, n)`` ranks the N shards by a stable hash of (symbol, shard) and takes the highest.
A symbol's owner depends on that symbol and N only: adding or removing a symbol moves nothing else,
and going from N to N+1 shards moves only the symbols whose new shard N+1 wins, about 1/(N+1) of them.
The hash is blake2b (not Python's ``hash``, which is salted per process): every process, on every
machine, agrees. Imports nothing of coby.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N); None for None. Raises ValueError with the reason."""
    if text is None:
        return None
    k, sep, n = str(text).partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise ValueError("must be K/N, e.g. 0/3")
    ki, ni = int(k), int(n)
    if ni < 1 or not 0 <= ki < ni:
        raise ValueError("must be K/N with N >= 1 and 0 <= K < N")
    return ki, ni


def weight(symbol: str, shard: int) -> int:
    digest = hashlib.blake2b(f"{symbol}\x00{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(symbol: str, shards: int) -> int:
    """The shard (0..shards-1) that owns ``symbol``."""
    return max(range(shards), key=lambda k: weight(symbol, k))


def shard_symbols(symbols: Iterable[str], shard: tuple[int, int] | None) -> tuple[str, ...]:
    """The symbols of ``shard`` (K, N), in their configured order; all of them for None."""
    if shard is None:
        return tuple(symbols)
    k, n = shard
    return tuple(s for s in symbols if owner(s, n) == k)
