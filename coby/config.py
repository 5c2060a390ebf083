"""coby's settings, each declared once: name, default, environment variables, help.

Precedence, lowest first: the defaults below < a TOML file (``--config FILE``) <
the environment < CLI flags. ``Settings.load`` builds one frozen object from
those sources; it is passed down explicitly and never read from a global. Reading
the TOML file and coercing raw values to each setting's type is done in
``coby.settings_sources``.

An invalid value raises ``ConfigError`` naming the setting; the CLI prints that
one line and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import quote

from coby.errors import ConfigError
from coby.settings_checks import (EXCHANGE_ALIASES, EXCHANGES, check_backfill, check_bucket_sizes, check_choice,
                                  check_db_url, check_exchange_urls, check_exchanges, check_log_level,
                                  check_non_negative, check_origins, check_port, check_positive, check_redis_url,
                                  check_shard, check_symbol_map, check_symbols, setting)
from coby.settings_sources import coerce, read_toml

#: Retention when retention_days / snapshot_retention_days are unset and the storage is SQLite: a bound
#: on the embedded default's file (it grows ~125 MB an hour with ten venues and two symbols, snapshots
#: most of it): 2 days of snapshots and a week of the rest, then flat.
SQLITE_RETENTION_DAYS = 7.0
SQLITE_SNAPSHOT_RETENTION_DAYS = 2.0


@dataclass(frozen=True, slots=True)
class Settings:
    # --- what to watch -----------------------------------------------------------------------
    exchanges: tuple[str, ...] = setting(EXCHANGES, "Venues to connect to (ccxt ids).",
                                         ("COBY_EXCHANGES",), check_exchanges)
    symbols: tuple[str, ...] = setting(("BTC-USDT", "ETH-USDT"), "Canonical symbols to watch.",
                                       ("COBY_SYMBOLS",), check_symbols)
    # --- storage -----------------------------------------------------------------------------
    db_url: str | None = setting(None, "Database URL: postgresql://... or sqlite:///path. Unset: DB_HOST if given, "
                                 "else an SQLite file in data_dir.", ("COBY_DB_URL",), check_db_url, secret=True)
    db_host: str | None = setting(None, "PostgreSQL host (used when db_url is unset).", ("DB_HOST",))
    db_port: int = setting(5432, "PostgreSQL port.", ("DB_PORT",), check_port)
    db_name: str = setting("market_data", "PostgreSQL database name.", ("DB_NAME",))
    db_user: str = setting("market_user", "PostgreSQL user.", ("DB_USER",))
    db_password: str = setting("", "PostgreSQL password.", ("DB_PASSWORD",), secret=True)
    db_pool_size: int = setting(4, "PostgreSQL connection pool size.", ("COBY_DB_POOL_SIZE",), check_positive)
    data_dir: str = setting("./coby-data", "Directory for the SQLite database, the market cache and the write journal "
                            "(data_dir/journal: rows on their way to the database).",
                            ("COBY_DATA_DIR",))
    batch_write_size: int = setting(1000, "Rows per table that trigger journalling before flush_interval is up.",
                                    ("COBY_BATCH_WRITE_SIZE",), check_positive)
    data_buffer_size: int = setting(10000, "Rows per table the write path holds in memory once journalled (more "
                                    "wait on disk only, in data_dir/journal, and are read back from there).",
                                    ("COBY_DATA_BUFFER_SIZE",), check_positive)
    flush_interval: float = setting(1.0, "Seconds within which an accepted row is journalled and fsynced on local "
                                    "disk (a kill -9 loses at most this much); also the write path's idle wait.",
                                    ("COBY_FLUSH_INTERVAL",), check_positive)
    journal_alert_bytes: int = setting(512 * 1024 * 1024, "Journal bytes not yet in the database above which "
                                       "/ready says storage is behind (the journal itself keeps growing while "
                                       "the disk has room).", ("COBY_JOURNAL_ALERT_BYTES",), check_positive)
    buffer_full_policy: str = setting("spill", "Deprecated, has no effect: every row is journalled on disk "
                                      "(data_dir/journal) until the database has it. Accepted so that older "
                                      "configurations still load.",
                                      ("COBY_BUFFER_FULL_POLICY",), check_choice("spill", "drop"))
    retention_days: float | None = setting(None, "Days of data kept, in every storage mode (0: keep all). Unset: "
                                           f"{SQLITE_RETENTION_DAYS:g} days with SQLite (which grows ~125 MB an "
                                           "hour by default), everything with PostgreSQL. TimescaleDB drops whole "
                                           "chunks by its retention policy; SQLite and plain PostgreSQL delete "
                                           "old rows in bounded batches every retention_interval.",
                                           ("COBY_RETENTION_DAYS",), check_non_negative)
    snapshot_retention_days: float | None = setting(None, "Days of order_book_snapshots kept (most of the volume), "
                                                    f"0: keep all. Unset: {SQLITE_SNAPSHOT_RETENTION_DAYS:g} days with "
                                                    "SQLite, else retention_days.",
                                                    ("COBY_SNAPSHOT_RETENTION_DAYS",), check_non_negative)
    retention_interval: float = setting(3600.0, "Seconds between two passes of the retention job (SQLite and plain "
                                        "PostgreSQL); the first runs a minute after start.",
                                        ("COBY_RETENTION_INTERVAL",), check_positive)
    retention_batch: int = setting(10000, "Rows one retention DELETE removes at most (each its own short "
                                   "transaction, so writers are never held up for long).",
                                   ("COBY_RETENTION_BATCH",), check_positive)
    compress_after_hours: float = setting(24.0, "TimescaleDB: compress chunks older than this many hours.",
                                          ("COBY_COMPRESS_AFTER_HOURS",), check_positive)
    # --- cache -------------------------------------------------------------------------------
    redis_url: str | None = setting(None, "Redis URL. Unset: REDIS_HOST if given, else an in-process cache.",
                                    ("COBY_REDIS_URL",), check_redis_url, secret=True)
    redis_host: str | None = setting(None, "Redis host (used when redis_url is unset).", ("REDIS_HOST",))
    redis_port: int = setting(6379, "Redis port.", ("REDIS_PORT",), check_port)
    bus_stream_length: int = setting(5000, "Messages kept per queued channel (trades, ohlcv) in its Redis stream "
                                     "(approximately): what an API node or a WebSocket client that was away can "
                                     "still catch up on; older ones are a gap message.",
                                     ("COBY_BUS_STREAM_LENGTH",), check_positive)
    bus_book_stream_length: int = setting(4, "States kept per book-like channel in its Redis stream (each is a "
                                          "full state: only the newest matters).", ("COBY_BUS_BOOK_STREAM_LENGTH",),
                                          check_positive)
    # --- aggregation -------------------------------------------------------------------------
    bucket_sizes: dict[str, float] = setting({"BTC": 10.0, "ETH": 1.0}, "Price bucket width per base asset (or per "
                                             "canonical symbol), in quote currency. Env or flag: BTC=10,ETH=1 or "
                                             "{\"BTC\": 10, \"ETH\": 1}.", ("COBY_BUCKET_SIZES",), check_bucket_sizes)
    default_bucket_size: float = setting(1.0, "Bucket width for symbols not in bucket_sizes.",
                                         ("COBY_DEFAULT_BUCKET_SIZE",), check_positive)
    aggregate_interval: float = setting(0.5, "Seconds between aggregation ticks (buckets, heatmap, imbalance, "
                                        "consolidated book over all venues at once).", ("COBY_AGGREGATE_INTERVAL",),
                                        check_positive)
    heatmap_interval: float = setting(5.0, "Seconds between heatmaps stored in heatmap_data.",
                                      ("COBY_HEATMAP_INTERVAL",), check_positive)
    book_publish_interval: float = setting(0.1, "Seconds between two states of one venue's book published on its "
                                           "book channel and cached (the newest wins; 0: every update).",
                                           ("COBY_BOOK_PUBLISH_INTERVAL",), check_non_negative)
    overload_loop_lag: float = setting(0.25, "Event-loop lag (worst sleep overshoot in a second), seconds, at or "
                                       "above which a second counts as overloaded.", ("COBY_OVERLOAD_LOOP_LAG",),
                                       check_positive)
    overload_feed_delay: float = setting(1.0, "Seconds a venue's newest book may trail its own timestamp (above the "
                                         "least delay seen, which absorbs clock skew) before a second counts as "
                                         "overloaded: the daemon reads slower than the venue sends.",
                                         ("COBY_OVERLOAD_FEED_DELAY",), check_positive)
    overload_memory_mb: float = setting(1536.0, "Resident memory, MB, at or above which a second counts as "
                                        "overloaded (0: not checked).", ("COBY_OVERLOAD_MEMORY_MB",), check_non_negative)
    overload_after: int = setting(3, "Overloaded seconds (within twice as many) before the daemon says overloaded "
                                  "and starts degrading (docs/operations.md, overload).", ("COBY_OVERLOAD_AFTER",),
                                  check_positive)
    overload_warmup: float = setting(30.0, "Seconds after the daemon starts during which no second counts as "
                                     "overloaded and loop lags stay out of the p99: building every venue's clients "
                                     "and their first books is a burst, not overload.", ("COBY_OVERLOAD_WARMUP",),
                                     check_non_negative)
    overload_recover: int = setting(10, "Consecutive clear seconds before an overloaded daemon returns to normal "
                                    "intervals.", ("COBY_OVERLOAD_RECOVER",), check_positive)
    ohlcv_grace: float = setting(2.0, "Seconds an OHLCV bar stays open after its end for late trades.",
                                 ("COBY_OHLCV_GRACE",), check_non_negative)
    ohlcv_repair_window: float = setting(600.0, "Seconds behind the close horizon within which a trade older than "
                                         "its open OHLCV bar (a venue's snapshot of recent trades, trades missed "
                                         "in a reconnect) is folded into its closed bars, stored again and "
                                         "re-published; older ones are counted in coby_ohlcv_late_trades_total "
                                         "(0: never repair). Closed bars of the window are kept in memory: about "
                                         "0.5 kB per venue, symbol and second with trades.",
                                         ("COBY_OHLCV_REPAIR_WINDOW",), check_non_negative)
    # --- connectors --------------------------------------------------------------------------
    max_connections_per_exchange: int = setting(5, "ccxt clients per venue and stream kind (books, trades: never on "
                                                "one client): symbols are spread over at most this many (one per "
                                                "symbol by default, so one symbol's recovery never touches "
                                                "another's); each client opens one or two connections.",
                                                ("COBY_MAX_CONNECTIONS_PER_EXCHANGE",), check_positive)
    snapshot_interval: float = setting(1.0, "Seconds between stored book snapshots per (venue, symbol).",
                                       ("COBY_SNAPSHOT_INTERVAL",), check_positive)
    snapshot_depth: int = setting(20, "Levels per side in stored book snapshots.",
                                  ("COBY_SNAPSHOT_DEPTH",), check_positive)
    book_depth: int = setting(100, "Levels per side kept in the live (cached, aggregated) book.",
                              ("COBY_BOOK_DEPTH",), check_positive)
    stale_after: float = setting(10.0, "Seconds without a book update before the watchdog recreates the feed.",
                                 ("COBY_STALE_AFTER",), check_positive)
    backoff_initial: float = setting(0.5, "First reconnect delay, seconds (doubles, with jitter).",
                                     ("COBY_BACKOFF_INITIAL",), check_positive)
    backoff_max: float = setting(30.0, "Largest reconnect delay, seconds.", ("COBY_BACKOFF_MAX",), check_positive)
    circuit_failures: int = setting(5, "Consecutive failures that open a venue's circuit breaker.",
                                    ("COBY_CIRCUIT_FAILURES",), check_positive)
    circuit_cooldown: float = setting(60.0, "Seconds an open circuit waits before a half-open probe.",
                                      ("COBY_CIRCUIT_COOLDOWN",), check_positive)
    simulate: bool = setting(False, "Start the exchange simulator in-process and point every venue at it.",
                             ("COBY_SIMULATE",))
    simulator_port: int = setting(8765, "Port of the exchange simulator.", ("COBY_SIMULATOR_PORT",), check_port)
    exchange_urls: dict[str, str] = setting({}, "Base URL per venue (key '*': every venue) of a server speaking the "
                                            "venues' protocols; env or flag: *=http://127.0.0.1:8765,"
                                            "binance=http://... or {\"*\": \"http://127.0.0.1:8765\"}; each "
                                            "venue's endpoints become BASE/<venue>/... (the simulator's layout). "
                                            "With simulate, '*' defaults to http://127.0.0.1:<simulator_port>. "
                                            "Markets are then preset.",
                                            ("COBY_EXCHANGE_URLS",), check_exchange_urls)
    symbol_map: dict[str, dict[str, str]] = setting({}, "Per-venue market for a canonical symbol, overriding "
                                                    "BASE/QUOTE, e.g. {coinbase = {\"BTC-USDT\" = \"BTC/USD\"}}; "
                                                    "a venue id may follow the symbol after a vertical bar. "
                                                    "Env or flag: "
                                                    "venue:CANONICAL=SYMBOL,... or {\"venue\": {\"CANONICAL\": "
                                                    "\"SYMBOL\"}}. See docs/symbols.md.",
                                                    ("COBY_SYMBOL_MAP",), check_symbol_map)
    book_emit_interval: float = setting(0.05, "Seconds between two states of one book a connector hands on (0: "
                                        "every update). The newest state wins; a held-back one follows within "
                                        "1.5 intervals. Bounds the cost of normalising book_depth levels per "
                                        "update under fast feeds.",
                                        ("COBY_BOOK_EMIT_INTERVAL",), check_non_negative)
    connect_timeout: float = setting(20.0, "Seconds a (re)connecting feed may take to deliver its first book before "
                                     "the watchdog recreates it.", ("COBY_CONNECT_TIMEOUT",), check_positive)
    trade_stale_after: float = setting(120.0, "Seconds without a trade before the watchdog recreates a trade feed "
                                       "(0: never). Skipped while other trades on the same connection flow; while "
                                       "the symbol's book flows the trades are only resubscribed, with no event: "
                                       "a quiet market is not a dead feed.", ("COBY_TRADE_STALE_AFTER",),
                                       check_non_negative)
    backfill: tuple[str, ...] = setting(("*",), "Venues whose trade gaps (every reconnect, resync, stall, circuit "
                                        "close and daemon start) are filled from their REST trade history "
                                        "('*': every venue that has one; empty: none). See docs/architecture.md.",
                                        ("COBY_BACKFILL",), check_backfill)
    backfill_max_gap: float = setting(3600.0, "Longest trade gap, in seconds, that is filled; a longer one is "
                                      "filled over its last backfill_max_gap seconds and reported narrowed.",
                                      ("COBY_BACKFILL_MAX_GAP",), check_positive)
    markets_ttl: float = setting(86400.0, "Seconds the on-disk market cache (data_dir/markets) is used before a "
                                 "refresh from the venue is tried.", ("COBY_MARKETS_TTL",), check_positive)
    max_future_skew: float = setting(5.0, "Validation: reject items stamped more than this many seconds in the "
                                     "future.", ("COBY_MAX_FUTURE_SKEW",), check_positive)
    max_data_age: float = setting(3600.0, "Validation: reject items stamped more than this many seconds in the past.",
                                  ("COBY_MAX_DATA_AGE",), check_positive)
    trade_id_memory: int = setting(10000, "Recent trade ids remembered per (venue, symbol) to reject duplicates "
                                   "(as 64-bit hashes: ~34 bytes each once full, growing to that as trades arrive; the gap filler "
                                   "keeps at most 5,000 more).",
                                   ("COBY_TRADE_ID_MEMORY",), check_positive)
    reject_log_interval: float = setting(10.0, "Seconds between two log lines about rejected items of one venue and "
                                         "reason (the others are counted).",
                                         ("COBY_REJECT_LOG_INTERVAL",), check_positive)
    # --- API ---------------------------------------------------------------------------------
    api_host: str = setting("127.0.0.1", "Address the HTTP API binds to.", ("API_HOST",))
    api_port: int = setting(8080, "Port of the HTTP API.", ("API_PORT",), check_port)
    api_token: str | None = setting(None, "Bearer token required on every route but /health and the dashboard's files when set.",
                                    ("COBY_API_TOKEN",), secret=True)
    api_cors_origins: tuple[str, ...] = setting((), "Browser origins allowed to call the API (CORS) and to open "
                                                "/ws, e.g. https://desk.example; '*' for any. Empty: none but the "
                                                "API's own origin.", ("COBY_API_CORS_ORIGINS",), check_origins)
    api_max_range_days: float = setting(7.0, "Longest time range (end - start) one history request may ask for, days.",
                                        ("COBY_API_MAX_RANGE_DAYS",), check_positive)
    api_max_page: int = setting(1000, "Largest page (limit) of a history request.",
                                ("COBY_API_MAX_PAGE",), check_positive)
    ws_max_subscriptions: int = setting(100, "Channels one WebSocket connection may subscribe to.",
                                        ("COBY_WS_MAX_SUBSCRIPTIONS",), check_positive)
    ws_max_connections_per_ip: int = setting(50, "WebSocket connections allowed at once from one client address.",
                                             ("COBY_WS_MAX_CONNECTIONS_PER_IP",), check_positive)
    ws_queue_size: int = setting(2000, "Messages of queued channels (trades, ohlcv) one WebSocket client may fall "
                                 "behind; one more and it is told why and disconnected (close code 4008). Book-like "
                                 "channels coalesce to the latest state instead.",
                                 ("COBY_WS_QUEUE_SIZE",), check_positive)
    ws_heartbeat: float = setting(30.0, "Seconds between WebSocket pings; a client that misses the pong is dropped.",
                                  ("COBY_WS_HEARTBEAT",), check_positive)
    ws_close_timeout: float = setting(5.0, "Seconds a disconnected slow client has to take its error and close frame "
                                      "before the connection is aborted.", ("COBY_WS_CLOSE_TIMEOUT",), check_positive)
    # --- replay ------------------------------------------------------------------------------
    replay_max_sessions: int = setting(8, "Replay sessions that may be active (created, running or paused) at once.",
                                       ("COBY_REPLAY_MAX_SESSIONS",), check_positive)
    replay_max_range_days: float = setting(31.0, "Longest time range (end - start) of one replay session, days.",
                                           ("COBY_REPLAY_MAX_RANGE_DAYS",), check_positive)
    replay_idle_ttl: float = setting(600.0, "Seconds after which a replay session that has ended, or is left "
                                     "untouched (not started, paused, or blocked on a subscriber that does not "
                                     "read), is stopped and forgotten.", ("COBY_REPLAY_IDLE_TTL",), check_positive)
    replay_chunk: int = setting(5000, "Rows a replay session reads from each table at a time (two chunks per table "
                                "in memory at most).", ("COBY_REPLAY_CHUNK",), check_positive)
    replay_queue_size: int = setting(1000, "Messages one replay subscriber may have unread before the session waits "
                                     "for it (replay never drops).", ("COBY_REPLAY_QUEUE_SIZE",), check_positive)
    # --- scale-out (docs/scaling.md) -------------------------------------------------------------
    role: str = setting("all", "What this process runs: all (one process: connectors, storage, API), collector "
                        "(connectors, aggregation, storage writes; only /health, /ready, /metrics) or api (REST, "
                        "WebSocket, dashboard, replay from Redis and the database; no venue connection). A role "
                        "other than all needs PostgreSQL and Redis.",
                        ("COBY_ROLE",), check_choice("all", "collector", "api"))
    shard: str | None = setting(None, "A collector's share of the symbols, K/N (0 <= K < N): each symbol goes to one "
                                "of N shards by rendezvous hashing, so adding a symbol moves only it. Unset: every "
                                "symbol.", ("COBY_SHARD",), check_shard)
    standby: bool = setting(False, "A collector that owns nothing at start and takes over the symbols (of its shard, "
                            "or all) whose ownership lease expires.", ("COBY_STANDBY",))
    collector_id: str | None = setting(None, "This collector's name in the cluster (leases, status). Unset: "
                                       "host:pid.", ("COBY_COLLECTOR_ID",))
    lease_ttl: float = setting(10.0, "Seconds a collector's ownership of a symbol (a Redis key) lasts without a "
                               "heartbeat; a standby takes over within this plus the venues' connect time.",
                               ("COBY_LEASE_TTL",), check_positive)
    lease_heartbeat: float = setting(2.0, "Seconds between a collector's lease refreshes (and its cluster status); "
                                     "must be well below lease_ttl.", ("COBY_LEASE_HEARTBEAT",), check_positive)
    # --- operations --------------------------------------------------------------------------
    event_loop: str = setting("auto", "The event loop coby run runs on: uvloop (libuv's loop, in C: less CPU per "
                              "venue message and per WebSocket client; docs/benchmarks.md), asyncio (the standard "
                              "library's), or auto (uvloop where it is installed, else asyncio).",
                              ("COBY_EVENT_LOOP",), check_choice("auto", "uvloop", "asyncio"))
    log_level: str = setting("INFO", "Log level.", ("LOG_LEVEL",), check_log_level)
    shutdown_timeout: float = setting(15.0, "Seconds shutdown may take before remaining tasks are cancelled.",
                                      ("COBY_SHUTDOWN_TIMEOUT",), check_positive)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, config_file: str | Path | None = None, env: Mapping[str, str] | None = None,
             **overrides: Any) -> "Settings":
        """Build settings: defaults < TOML file < environment < ``overrides`` (CLI flags; None = not given)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(_read_toml(Path(config_file)))
        for f in dataclasses.fields(cls):
            for var in f.metadata["env"]:
                if var in env and env[var] != "":
                    values[f.name] = _parse(f, env[var], source=f"environment variable {var}")
                    break
        for name, value in overrides.items():
            if value is None:
                continue
            if name not in _FIELDS:
                raise ConfigError(f"unknown setting {name!r}")
            values[name] = _parse(_FIELDS[name], value, source=f"option --{name.replace('_', '-')}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata["check"]
            value = getattr(self, f.name)
            if check is not None and value is not None:
                msg = check(value)
                if msg:
                    raise ConfigError(f"invalid setting {f.name}={_show(f, value)}: {msg}")
        if self.snapshot_depth > self.book_depth:
            raise ConfigError(f"invalid setting snapshot_depth={self.snapshot_depth}: must be <= book_depth "
                              f"({self.book_depth})")
        if self.role != "all":
            if not self.storage_url.startswith(("postgresql://", "postgres://")):
                raise ConfigError(f"invalid setting role={self.role}: a distributed role needs PostgreSQL/TimescaleDB "
                                  "(db_url or DB_HOST), not SQLite")
            if self.cache_url is None:
                raise ConfigError(f"invalid setting role={self.role}: a distributed role needs Redis (redis_url or "
                                  "REDIS_HOST), not the in-process cache")
        if self.role != "collector" and (self.standby or self.shard):
            raise ConfigError(f"invalid setting {'standby' if self.standby else 'shard'}: only a collector "
                              f"(role=collector) has a shard or stands by, not role={self.role}")
        if self.lease_heartbeat * 2 > self.lease_ttl:
            raise ConfigError(f"invalid setting lease_heartbeat={self.lease_heartbeat:g}: must be at most half of "
                              f"lease_ttl ({self.lease_ttl:g})")
        if self.batch_write_size > self.data_buffer_size:
            raise ConfigError(f"invalid setting batch_write_size={self.batch_write_size}: must be <= "
                              f"data_buffer_size ({self.data_buffer_size})")

    # --- derived ------------------------------------------------------------------------------
    @property
    def storage_url(self) -> str:
        """The database to use: db_url, else PostgreSQL at db_host, else SQLite in data_dir."""
        if self.db_url:
            return self.db_url
        if self.db_host:
            auth = quote(self.db_user, safe="")
            if self.db_password:
                auth += ":" + quote(self.db_password, safe="")
            return f"postgresql://{auth}@{self.db_host}:{self.db_port}/{self.db_name}"
        return f"sqlite:///{Path(self.data_dir) / 'coby.sqlite3'}"

    @property
    def cache_url(self) -> str | None:
        """Redis URL, or None for the in-process cache."""
        if self.redis_url:
            return self.redis_url
        if self.redis_host:
            return f"redis://{self.redis_host}:{self.redis_port}/0"
        return None

    def retention(self, sqlite: bool) -> tuple[float, float]:
        """(days of data kept, days of book snapshots kept) for a storage kind; 0: keep all."""
        days = self.retention_days
        if days is None:
            days = SQLITE_RETENTION_DAYS if sqlite else 0.0
        snapshots = self.snapshot_retention_days
        if snapshots is None:
            snapshots = SQLITE_SNAPSHOT_RETENTION_DAYS if sqlite and self.retention_days is None else days
        return days, snapshots

    def bucket_size(self, symbol: str) -> float:
        """Bucket width for a canonical symbol: by symbol, then by base asset, then the default."""
        if symbol in self.bucket_sizes:
            return float(self.bucket_sizes[symbol])
        base = symbol.split("-", 1)[0]
        return float(self.bucket_sizes.get(base, self.default_bucket_size))

    def describe(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked (for logs and the status API)."""
        out = {}
        for f in dataclasses.fields(self):
            out[f.name] = _show(f, getattr(self, f.name))
        return out


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def documented_settings() -> list[tuple[str, Any, tuple[str, ...], str]]:
    """(name, default, env vars, help) for every setting: drives the README table and its test."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, default, f.metadata["env"], f.metadata["help"]))
    return rows


def _show(f: dataclasses.Field, value: Any) -> Any:
    if f.metadata.get("secret") and value:
        if f.name == "db_url" or f.name == "redis_url":
            return mask_url(value)
        return "***"
    return value


def mask_url(url: str) -> str:
    head, sep, tail = url.partition("://")
    if "@" in tail:
        cred, _, rest = tail.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{head}{sep}{user}:***@{rest}" if ":" in cred else url
    return url


def _read_toml(path: Path) -> dict[str, Any]:
    out = {}
    for key, value in read_toml(path).items():
        if key not in _FIELDS:
            raise ConfigError(f"config file {path}: unknown setting {key!r}")
        out[key] = _parse(_FIELDS[key], value, source=f"config file {path}")
    return out


def _parse(f: dataclasses.Field, value: Any, source: str) -> Any:
    """Coerce a raw value (string from env/CLI, or a TOML value) to the field's type."""
    return coerce(f.name, _HINTS[f.name], value, source, _CANONICAL_ITEM.get(f.name))


# How one item of a list setting is spelt canonically (before duplicates are dropped).
_CANONICAL_ITEM: dict[str, Callable[[str], str]] = {
    "exchanges": lambda i: EXCHANGE_ALIASES.get(i.lower(), i.lower()),
    "symbols": lambda i: i.upper().replace("/", "-"),
}

_HINTS = typing.get_type_hints(Settings)
