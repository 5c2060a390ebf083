"""The venues' REST trade histories as the gap filler (coby.collector.backfill) pages them: one row per venue.

Paging (:data:`PAGING`): ``since`` - forward by time from the gap's lower end (binance, kraken, bitfinex; mexc
with the window's end too); ``window`` - newest first within [lower, upper], backwards by time (coinbase);
``before_id`` - newest first, backwards by trade id (okx's history-trades, gate); ``latest`` - the latest page
only, no paging (bybit spot: 60; kucoin: 100; htx: 2000). ``limit`` is the venue's largest page.

Dedupe: by the venue's trade id where its history and its WebSocket send the same id (htx: REST ``trade-id`` is
the WebSocket's ``tradeId``); ``by_content`` where they do not (kucoin's history has no id, mexc sends none
anywhere): a trade is known by (time ms, price, amount, side), counted (:func:`new_by_content`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from coby.collector.recentkeys import RecentKeys
from coby.models import TradeEvent

LIVE_IDS = 5_000  # trade ids remembered per market, to tell a fetched trade from one that came live
MAX_PAGES = 200  # a bound on one fill's requests, whatever the venue answers

PageOf = Callable[[Any, int, dict], Awaitable[list[dict]]]


@dataclass(frozen=True, slots=True)
class Paging:
    mode: str  # since | window | before_id | latest
    limit: int  # the venue's largest page
    params: dict[str, Any] | None = None  # extra ccxt params (the method ccxt must call)
    cursor: str = "after"  # before_id: the parameter naming the id to page back from
    numbered: bool = True  # trade ids are numbers in trade order (bybit's are UUIDs)
    by_content: bool = False  # the history's trades carry no id the WebSocket sends: dedupe by content
    until: bool = False  # since: the venue needs the window's end too (mexc: startTime with endTime)


PAGING: dict[str, Paging] = {
    "binance": Paging("since", 1000),
    "okx": Paging("before_id", 100, {"method": "publicGetMarketHistoryTrades"}),
    "bybit": Paging("latest", 60, numbered=False),  # spot recent-trade: the latest 60 only
    "coinbase": Paging("window", 1000),
    "kraken": Paging("since", 1000),
    "bitfinex": Paging("since", 10_000),
    "gate": Paging("before_id", 1000, {"reverse": "true"}, cursor="last_id"),
    "htx": Paging("latest", 2000),  # /market/history/trade: the latest 2000; trade-id = the WebSocket's tradeId
    "kucoin": Paging("latest", 100, numbered=False, by_content=True),  # /market/histories: the last 100, no id
    "mexc": Paging("since", 1000, numbered=False, by_content=True, until=True),  # aggTrades: no id at all
}

Fingerprint = tuple[int, float, float, str]  # (time ms, price, amount, side): a trade known by its content


def fingerprint(ts: int, price: float, amount: float, side: str) -> Fingerprint:
    return (int(ts), float(price), float(amount), side)


def content_id(fp: Fingerprint, occurrence: int) -> str:
    """The id coby gives a trade the venue sends without one (as ``DataProcessor.normalize_trade`` does)."""
    return f"{fp[0]}:{fp[1]!r}:{fp[2]!r}:{fp[3]}:{occurrence}"


@dataclass(frozen=True, slots=True)
class Mark:
    """One end of a gap: a trade's time (ms), id and content."""

    ts: int
    id: str
    fp: Fingerprint | None = None

    @classmethod
    def of(cls, t: TradeEvent) -> "Mark":
        ts = round(t.timestamp.timestamp() * 1000)
        return cls(ts, t.trade_id, (ts, t.price, t.size, t.side))



def new_by_content(raws: list[dict], live: RecentKeys, stored: list[TradeEvent]) -> list[dict]:
    """The fetched trades not yet known, where the venue's history carries no id its WebSocket sends: by
    content (time ms, price, amount, side), counted - of n fetched trades alike, those beyond the number
    known (live or stored, whichever knows more) are new. Each gets coby's content id, numbered on from
    the known ones. The residual risk: two alike trades (same millisecond, price, amount and side), one
    known only live (not yet stored) and the other only stored (older than the live memory), count as one
    known: the other is stored a second time. Trades alike but unknown are all kept (counted, not merged)."""
    known: dict[Fingerprint, int] = {}
    for t in stored:
        fp = Mark.of(t).fp
        known[fp] = known.get(fp, 0) + 1
    taken: dict[Fingerprint, int] = {}
    wanted = []
    for r in raws:
        fp = fingerprint(r["timestamp"], r["price"], r["amount"], r["side"])
        k = taken[fp] = taken.get(fp, -1) + 1
        if k >= max(known.get(fp, 0), live.count(fp)):
            wanted.append({**r, "id": content_id(fp, k)})
    return wanted


async def fetch(page_of: PageOf, paging: Paging, lower: Mark, upper: Mark) -> tuple[list[dict], bool]:
    """The venue's trades from ``lower`` to ``upper`` as ccxt parses them, paged the venue's way, in trade order;
    and whether they reach ``lower``. ``page_of(since, limit, params)`` asks for one page."""
    params = dict(paging.params or {})
    if paging.until:
        params["until"] = upper.ts
    got: dict[str, dict] = {}  # by id; by content: every trade (pages never overlap, see below)
    pages: list[list[dict]] = []
    cursor_ts, until = lower.ts, upper.ts
    cursor_id: str | None = None
    for n in range(MAX_PAGES):
        if paging.mode == "since":
            page = await page_of(cursor_ts, paging.limit, params)
        elif paging.mode == "window":
            page = await page_of(lower.ts, paging.limit, {**params, "until": until + 1000})
        elif paging.mode == "before_id":
            page = await page_of(None, paging.limit,
                                    {**params, paging.cursor: cursor_id} if cursor_id else params)
        else:
            page = await page_of(None, paging.limit, params)
        full = len(page) >= paging.limit and paging.mode != "latest"
        if paging.by_content:
            if full and paging.mode == "since":  # the last millisecond may go on in the next page: asked again
                last = max(r["timestamp"] for r in page)
                rest = [r for r in page if r["timestamp"] < last]
                page, full = (rest, True) if rest else (page, False)
            new = page
            got.update((f"{n}:{i}", r) for i, r in enumerate(page))
        else:
            new = [r for r in page if r.get("id") is not None and str(r["id"]) not in got]
            got.update((str(r["id"]), r) for r in new)
        pages.append(new)
        if not new or not full:
            break
        if paging.mode == "since":
            last = max(r["timestamp"] for r in page)
            if last >= upper.ts:
                break
            cursor_ts = last + 1 if paging.by_content else last if last > cursor_ts else cursor_ts + 1
        else:
            oldest = min(page, key=lambda r: r["timestamp"])
            if reached(paging, lower, got) or oldest["timestamp"] < lower.ts:
                break
            until, cursor_id = oldest["timestamp"], str(oldest["id"])
    # In trade order (trades of one millisecond too: OHLCV's open and close depend on it): by id where ids are
    # numbers in trade order; else by time only - ccxt orders a page's trades of one millisecond by its id
    # (a UUID, or its content id), so the venue's order within a millisecond is not known (bybit, kucoin, mexc).
    ordered = [r for page in pages for r in page]
    if paging.numbered:
        ordered.sort(key=lambda r: (r["timestamp"], int(r["id"])))
    else:
        ordered.sort(key=lambda r: r["timestamp"])
    return ordered, reached(paging, lower, got)


def reached(paging: Paging, lower: Mark, got: dict[str, dict]) -> bool:
    """The fetched history holds the gap's lower end, or a trade older than it."""
    if not paging.by_content and lower.id in got:
        return True
    return any(r["timestamp"] < lower.ts or (paging.by_content and lower.fp == fingerprint(
        r["timestamp"], r["price"], r["amount"], r["side"])) for r in got.values())
