"""Books normalised per consumer, not per update (coby.pendingbook): converted only when resolved, once per
state, never torn, never past a failure, and still validated with the reason counted before any consumer
sees them. A fake ccxt client that keeps one live book and mutates it in place as ccxt.pro does, then all
ten venues through the simulator with unmodified ccxt.pro."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from coby.cache import MemoryCache
from coby.config import Settings
from coby.exchanges import ExchangeConnector
from coby.metrics import REJECTS
from coby.pendingbook import PendingBook
from coby.pipeline import Pipeline
from coby.simulator import Simulator


def settings(tmp: Any, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(exchange_urls={"*": "http://127.0.0.1:9"}, data_dir=str(tmp), log_level="WARNING",
                                stale_after=1e6, connect_timeout=1e6, trade_stale_after=1e6, book_emit_interval=0.0)
    base.update(kw)
    return Settings.load(env={}, **base)


class LiveBook:
    """A ccxt.pro stand-in with one book it mutates in place (levels are ccxt's ``[price, size]`` lists)."""

    def __init__(self) -> None:
        self.book: dict[str, Any] = {"bids": [[100.0, 1.0], [99.0, 2.0]], "asks": [[101.0, 1.0], [102.0, 2.0]],
                                     "nonce": 0, "timestamp": None}
        self.orderbooks = {"BTC/USDT": self.book}
        self.frames: asyncio.Queue[Any] = asyncio.Queue()

    def client(self, url: str) -> Any:
        return None

    async def watch_order_book(self, symbol: str, limit: int | None = None) -> dict[str, Any]:
        change = await self.frames.get()
        if isinstance(change, Exception):
            raise change
        change(self.book)
        self.book["nonce"] += 1
        return self.book

    async def watch_trades(self, symbol: str) -> list[Any]:
        await asyncio.Event().wait()
        return []

    async def close(self) -> None:
        pass


async def until(cond: Any, timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < end, "condition not met in time"
        await asyncio.sleep(0.001)


async def connector(tmp_path: Any) -> tuple[ExchangeConnector, LiveBook, list[Any], list[int]]:
    ex, got, converted = LiveBook(), [], []
    conn = ExchangeConnector("kraken", settings(tmp_path), client_factory=lambda *a: ex)
    process = conn.processor.process_orderbook

    def counting(*args: Any) -> Any:
        converted.append(args[3])  # the depth converted
        return process(*args)

    conn.processor.process_orderbook = counting  # type: ignore[method-assign]
    conn.add_data_callback(lambda item: got.append(item) if type(item) is PendingBook else None, lazy_books=True)
    await conn.subscribe_orderbook("BTC-USDT")
    return conn, ex, got, converted


def size(level: list[float]) -> Any:
    def change(book: dict[str, Any]) -> None:
        book["bids"][0][1] = level  # as ccxt's OrderBookSide.storeArray: the level list is changed in place
    return change


async def test_converted_only_when_resolved_once_per_state_and_never_torn(tmp_path):
    """Five states handed on cost no conversion; resolving converts the newest once; a snapshot is a copy
    that ccxt's later in-place changes never reach."""
    conn, ex, got, converted = await connector(tmp_path)
    try:
        for s in (2.0, 3.0, 4.0, 5.0, 6.0):
            ex.frames.put_nowait(size(s))
        await until(lambda: len(got) == 5)
        p = got[-1]
        assert type(p) is PendingBook and all(g is p for g in got) and converted == []
        snap = p.resolve()
        assert snap is not None and snap.bids[0].size == 6.0 and snap.bids.prices.tolist() == [100.0, 99.0]
        assert p.resolve() is snap and len(converted) == 1  # one conversion per state, shared by consumers
        ex.book["bids"][0][1] = 9.0  # ccxt changes its book after the conversion
        assert snap.bids[0].size == 6.0  # the snapshot is not torn by it
        ex.frames.put_nowait(size(7.0))
        await until(lambda: p.version == 6)
        assert p.resolve().bids[0].size == 7.0 and conn.latest_book("BTC-USDT").bids[0].size == 7.0
    finally:
        await conn.disconnect()


@pytest.mark.parametrize("how", ["handler_error", "ccxt_dropped_it", "sequence_gap", "stream_failed"])
async def test_a_book_that_is_not_whole_is_never_resolved(tmp_path, how):
    """After a handler error on its feed, ccxt dropping the book, a sequence gap or a failed stream, the state
    handed on resolves to None (consumers keep what they had) until a new state is handed on."""
    import ccxt
    conn, ex, got, _ = await connector(tmp_path)
    try:
        ex.frames.put_nowait(size(2.0))
        await until(lambda: len(got) == 1)
        p, st = got[0], conn._streams[("book", "BTC-USDT")]
        good = conn.latest_book("BTC-USDT")
        assert good is not None
        ex.frames.put_nowait(size(3.0))
        await until(lambda: p.version == 2)
        if how == "handler_error":
            class Ws:
                def reject(self, err: Any) -> None:
                    pass
            conn._frame_failed(st.feed, st.feed.gen, Ws(), KeyError("half-applied"))
        elif how == "ccxt_dropped_it":
            del ex.orderbooks["BTC/USDT"]  # as ccxt does on a checksum failure
        elif how == "sequence_gap":
            st.feed.bad_books.add("BTC-USDT")
        else:
            ex.frames.put_nowait(ccxt.NetworkError("connection reset"))
            await until(lambda: st.epoch == 1)
        assert p.resolve() is None
        assert conn.latest_book("BTC-USDT") is good  # the last whole state
    finally:
        await conn.disconnect()


async def test_bad_level_refused_with_reason_before_any_consumer(tmp_path):
    """A negative size below the top passes the O(1) checks at hand-on but is refused (reason ``range``,
    counted) when resolved; the pipeline's tick, cache and subscribers keep the last valid book. A crossed
    top is refused at hand-on (``crossed_book``) and not handed on at all."""
    conn, ex, got, _ = await connector(tmp_path)
    bus = MemoryCache()
    pipe = Pipeline(settings(tmp_path), None, bus, run_timers=False)
    conn.add_data_callback(pipe.on_event, lazy_books=True)
    sub = bus.subscribe("book:kraken:BTC-USDT")
    rng, crossed = REJECTS.labels("kraken", "range"), REJECTS.labels("kraken", "crossed_book")
    r0, c0 = rng._value.get(), crossed._value.get()
    try:
        ex.frames.put_nowait(size(2.0))
        await until(lambda: len(got) == 1)
        await pipe.tick(1.7e9)
        assert pipe.engine.book("kraken", "BTC-USDT").bids[0].size == 2.0 and sub.queue.qsize() == 1

        def bad(book: dict[str, Any]) -> None:
            book["bids"][1][1] = -1.0
        pipe._last_published.clear()
        ex.frames.put_nowait(bad)
        await until(lambda: len(got) == 2)
        await pipe.tick(1.7e9 + 1)
        assert rng._value.get() == r0 + 1
        assert pipe.engine.book("kraken", "BTC-USDT").bids[1].size == 2.0  # the tick kept the valid book
        assert sub.queue.qsize() == 1  # nothing published
        assert (await bus.get_book("kraken", "BTC-USDT"))["data"]["bids"][1] == [99.0, 2.0]

        def cross(book: dict[str, Any]) -> None:
            book["bids"][1][1] = 2.0
            book["bids"][0][0] = 105.0
        ex.frames.put_nowait(cross)
        await asyncio.sleep(0.05)
        assert len(got) == 2 and crossed._value.get() == c0 + 1  # refused at hand-on, not progress
    finally:
        sub.close()
        await conn.disconnect()


async def test_a_stored_snapshot_converts_only_the_levels_it_stores(tmp_path):
    """resolve(depth) - a stored snapshot's 20 of 100 levels - converts and checks only the top ``depth`` of a
    state not converted yet; the tick's full resolve of that state converts the whole top then, and counts a
    bad level below ``depth`` once. A state rejected at its top is rejected whole, with no second conversion."""
    conn, ex, got, converted = await connector(tmp_path)
    rng = REJECTS.labels("kraken", "range")
    r0 = rng._value.get()

    def deep(bad_at: int) -> Any:
        def change(book: dict[str, Any]) -> None:
            book["bids"][:] = [[100.0 - i, -1.0 if i == bad_at else 1.0 + i] for i in range(5)]
            book["asks"][:] = [[101.0 + i, 1.0] for i in range(5)]
        return change
    try:
        ex.frames.put_nowait(deep(bad_at=3))  # a bad level below the stored depth
        await until(lambda: len(got) == 1)
        p = got[0]
        top = p.resolve(2)
        assert top is not None and top.bids.prices.tolist() == [100.0, 99.0] and len(top.asks) == 2
        assert p.resolve(2) is top and p.resolve(1) is top and converted == [2]
        assert p.resolve() is None and converted == [2, conn.settings.book_depth] and rng._value.get() == r0 + 1
        assert p.resolve(2) is None and len(converted) == 2  # the state is known bad now
        ex.frames.put_nowait(deep(bad_at=0))  # bad at the very top
        await until(lambda: p.version == 2)
        assert p.resolve(2) is None and rng._value.get() == r0 + 2
        assert p.resolve() is None and converted == [2, conn.settings.book_depth, 2]  # not converted again
        ex.frames.put_nowait(deep(bad_at=-1))  # all good: resolved in full first, any depth is answered by it
        await until(lambda: p.version == 3)
        full = p.resolve()
        assert full is not None and len(full.bids) == 5 and p.resolve(2) is full
    finally:
        await conn.disconnect()


async def test_the_pipeline_stores_snapshots_from_the_stored_levels_only(storage, tmp_path):
    """A stored snapshot (snapshot_depth 2) converts 2 levels a side of the state handed on; the tick converts
    that state's whole top once; the stored row and the engine's book are what each asked for."""
    conn, ex, got, converted = await connector(tmp_path)
    s = settings(tmp_path, db_url=storage.settings.db_url, snapshot_depth=2)
    pipe = Pipeline(s, storage, MemoryCache(), run_timers=False)
    conn.add_data_callback(pipe.on_event, lazy_books=True)

    def deep(book: dict[str, Any]) -> None:
        book["bids"][:] = [[100.0 - i, 1.0 + i] for i in range(5)]
        book["asks"][:] = [[101.0 + i, 1.0] for i in range(5)]
    try:
        ex.frames.put_nowait(deep)
        await until(lambda: len(got) == 1)
        assert converted == [2]
        await pipe.tick(1.7e9)
        assert converted == [2, s.book_depth] and len(pipe.engine.book("kraken", "BTC-USDT").bids) == 5
        await storage.flush()
        stored = await storage.get_snapshots("BTC-USDT")
        assert [(b.bids.prices.tolist(), b.asks.prices.tolist()) for b in stored] == [([100.0, 99.0], [101.0, 102.0])]
    finally:
        await conn.disconnect()


async def test_pipeline_pays_per_consumer(tmp_path):
    """No subscriber: a publish converts nothing (the cache converts if read, once); the tick converts each
    book once however many states arrived; with a subscriber every publish converts and is sent."""
    conn, ex, got, converted = await connector(tmp_path)
    bus = MemoryCache()
    s = settings(tmp_path, book_publish_interval=0.0)
    pipe = Pipeline(s, None, bus, run_timers=False)
    conn.add_data_callback(pipe.on_event, lazy_books=True)
    try:
        for v in (2.0, 3.0, 4.0):
            ex.frames.put_nowait(size(v))
        await until(lambda: len(got) == 3)
        assert converted == []  # three publishes, nobody subscribed
        cached = await bus.get_book("kraken", "BTC-USDT")
        assert cached["data"]["bids"][0] == [100.0, 4.0] and len(converted) == 1
        await bus.get_book("kraken", "BTC-USDT")
        await pipe.tick(1.7e9)
        assert len(converted) == 1 and pipe.engine.book("kraken", "BTC-USDT").bids[0].size == 4.0
        with bus.subscribe("book:kraken:BTC-USDT") as sub:
            for v in (5.0, 6.0):
                ex.frames.put_nowait(size(v))
            await until(lambda: sub.queue.qsize() == 2)
            assert len(converted) == 3
    finally:
        await conn.disconnect()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


VENUES = ("binance", "okx", "bybit", "kraken", "coinbase", "htx", "kucoin", "gate", "bitfinex", "mexc")


async def test_every_venue_resolves_lazily_to_the_true_book(tmp_path):
    """Unmodified ccxt.pro against the simulator, books handed on lazily only: every venue's pending book
    is ccxt's own live book (resolvable), and resolved it equals the server's true book."""
    sim = Simulator(exchanges=VENUES, symbols=("BTC-USDT",), port=free_port(), rate=20.0, seed=3)
    await sim.start()
    pend: dict[str, PendingBook] = {}
    conns = {v: ExchangeConnector(v, settings(tmp_path, exchange_urls={"*": sim.url}, book_emit_interval=0.05))
             for v in VENUES}
    try:
        for v, c in conns.items():
            c.add_data_callback(lambda item, v=v: pend.__setitem__(v, item) if type(item) is PendingBook else None,
                                lazy_books=True)
            await c.connect()
            await c.subscribe_orderbook("BTC-USDT")
        await until(lambda: len(pend) == len(VENUES), 45.0)
        bad: list[str] = []
        for _ in range(100):  # compare between two frames: resolve and read the true book at once
            bad = []
            for v, p in pend.items():
                b = p.resolve() if p.version else None
                tb, ta = sim.true_book(v, "BTC-USDT", 10)
                if b is None or ([(x.price, x.size) for x in b.bids[:10]], [(x.price, x.size) for x in b.asks[:10]]) \
                        != ([tuple(x) for x in tb], [tuple(x) for x in ta]):
                    bad.append(v)
            if not bad:
                break
            await asyncio.sleep(0.05)
        assert bad == []
    finally:
        await asyncio.gather(*(c.disconnect() for c in conns.values()))
        await sim.aclose()
