"""Prometheus metrics: every metric coby exports is declared here, once, on one registry.

Modules import the metric objects they update; ``/metrics`` renders ``REGISTRY``.
Labels are bounded sets (exchange, symbol, table, reason, channel) - never ids.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)

# --- intake ---------------------------------------------------------------------------------
MESSAGES = Counter("coby_messages_total", "Items received from venues, by kind (book, trade).",
                   ["exchange", "kind"], registry=REGISTRY)
REJECTS = Counter("coby_rejects_total", "Items rejected by validation, by reason.",
                  ["exchange", "reason"], registry=REGISTRY)
RECONNECTS = Counter("coby_reconnects_total", "Feed reconnects per venue.", ["exchange"], registry=REGISTRY)
RESYNCS = Counter("coby_resyncs_total", "Book resyncs (gap, nonce or checksum errors) per venue.",
                  ["exchange"], registry=REGISTRY)
STALLS = Counter("coby_stalls_total", "Feeds recreated by the staleness watchdog.", ["exchange"], registry=REGISTRY)
BOOK_AGE = Gauge("coby_book_age_seconds", "Seconds since the last book update.", ["exchange", "symbol"],
                 registry=REGISTRY)
CIRCUIT_OPEN = Gauge("coby_circuit_open", "1 while a venue's circuit breaker is open.", ["exchange"],
                     registry=REGISTRY)

OHLCV_LATE = Counter("coby_ohlcv_late_trades_total", "Trades left out of OHLCV bars: older than their open bar "
                     "and beyond ohlcv_repair_window (they are stored all the same).", ["exchange"], registry=REGISTRY)
OHLCV_REPAIRED = Counter("coby_ohlcv_repaired_trades_total", "Trades older than their open OHLCV bar folded into "
                         "their closed bars (within ohlcv_repair_window).", ["exchange"], registry=REGISTRY)
BACKFILL_GAPS = Counter("coby_backfill_gaps_total", "Trade-stream gaps filled from the venue's REST history, by "
                        "outcome: closed (the history reached back to the last trade before the gap) or narrowed "
                        "(too little history, a gap over backfill_max_gap, or a failed fetch).",
                        ["exchange", "outcome"], registry=REGISTRY)
BACKFILL_TRADES = Counter("coby_backfill_trades_total", "Trades recovered from venues' REST history after gaps.",
                          ["exchange"], registry=REGISTRY)
BACKFILL_RATE_LIMITED = Counter("coby_backfill_rate_limited_total", "REST history requests a venue refused as too "
                                "many (429): the fill waited and asked again.", ["exchange"], registry=REGISTRY)

# --- storage --------------------------------------------------------------------------------
ROWS_WRITTEN = Counter("coby_storage_rows_written_total", "Rows written to the database.", ["table"],
                       registry=REGISTRY)
ROWS_DUPLICATE = Counter("coby_storage_rows_duplicate_total", "Rows skipped because an identical key was stored.",
                         ["table"], registry=REGISTRY)
OVERFLOW = Counter("coby_storage_overflow_rows_total", "Rows set aside by the write path, by outcome (rejected: "
                   "refused by the database for their content, kept in data_dir/rejected).", ["table", "outcome"],
                   registry=REGISTRY)
BUFFER_DEPTH = Gauge("coby_storage_buffer_rows", "Rows accepted and held in memory (waiting for the journal, or "
                     "journalled and waiting for the database).", ["table"], registry=REGISTRY)
LOST_ROWS = Counter("coby_storage_lost_rows_total", "Rows accepted but never journalled (disk full, I/O error, "
                    "closed), by reason: these are lost.", ["table", "reason"], registry=REGISTRY)
JOURNAL_BYTES = Gauge("coby_storage_journal_bytes", "Journal bytes on local disk not yet committed by the database.",
                      ["table"], registry=REGISTRY)
JOURNAL_SKIPPED = Counter("coby_storage_journal_skipped_bytes_total", "Corrupt or torn journal bytes skipped "
                          "when reading the journal back.", ["table"], registry=REGISTRY)
STORAGE_UP = Gauge("coby_storage_up", "1 while the database accepts writes, 0 while it is down.", registry=REGISTRY)
FLUSH_FAILURES = Counter("coby_storage_flush_failures_total", "Failed flush attempts (rows kept, retried).",
                         ["table"], registry=REGISTRY)
WRITE_LATENCY = Histogram("coby_storage_flush_seconds", "Time to flush one batch.", ["table"], registry=REGISTRY,
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

# --- cache ----------------------------------------------------------------------------------
CACHE_ERRORS = Counter("coby_cache_errors_total", "Redis operations that failed (served from process memory).",
                       ["op"], registry=REGISTRY)
CACHE_CONNECTED = Gauge("coby_cache_connected", "1 while the Redis cache is reachable (1 for the in-process cache).",
                        registry=REGISTRY)
BUS_MESSAGES = Counter("coby_bus_messages_total", "Messages this process read from other processes' channels "
                       "(Redis Streams; an API node).", registry=REGISTRY)
BUS_GAPS = Counter("coby_bus_gaps_total", "Gaps in a queued channel read from Redis: messages trimmed from the "
                   "stream before this process read them (its clients got a gap message).", registry=REGISTRY)
BUS_RECONNECTS = Counter("coby_bus_reconnects_total", "Times this process' stream reader got Redis back after "
                         "losing it.", registry=REGISTRY)

# --- API ------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter("coby_http_requests_total", "HTTP requests by route template and status.",
                        ["route", "status"], registry=REGISTRY)
WS_CLIENTS = Gauge("coby_ws_clients", "WebSocket clients connected now.", registry=REGISTRY)
WS_MESSAGES = Counter("coby_ws_messages_sent_total", "Messages sent to WebSocket clients, by channel kind "
                      "(control: acks, errors, pongs).", ["kind"], registry=REGISTRY)
WS_COALESCED = Counter("coby_ws_coalesced_total", "Book-like updates replaced by a newer one before a slow client "
                       "took them, by channel kind.", ["kind"], registry=REGISTRY)
WS_DISCONNECTS = Counter("coby_ws_disconnects_total", "WebSocket connections ended, by reason (closed, "
                         "slow_consumer, overload, error, shutdown).", ["reason"], registry=REGISTRY)
WS_REFUSED = Counter("coby_ws_refused_total", "WebSocket upgrades refused, by reason (connections_per_ip, origin).",
                     ["reason"], registry=REGISTRY)
FEED_AGE = Gauge("coby_feed_age_seconds", "Seconds since a venue's connector last received a message.",
                 ["exchange"], registry=REGISTRY)
LOOP_LAG = Gauge("coby_event_loop_lag_seconds", "Worst event-loop lag (sleep overshoot) seen in the last second.",
                 registry=REGISTRY)
LOOP_LAG_P99 = Gauge("coby_event_loop_lag_p99_seconds", "99th percentile of the event-loop lag over the last minute "
                     "(sampled every 0.1 s).", registry=REGISTRY)
OVERLOADED = Gauge("coby_overloaded", "1 while the daemon cannot keep up (coby.collector.load: loop lag, feed delay, memory).",
                   registry=REGISTRY)
DEGRADATION_LEVEL = Gauge("coby_degradation_level", "0 normal; 1, 2: the intervals stretched under overload "
                          "(docs/operations.md, overload).", registry=REGISTRY)
FEED_DELAY = Gauge("coby_feed_delay_seconds", "How far a venue's newest book trails its own timestamp, above the "
                   "least delay seen (clock skew): grows while coby reads slower than the venue sends.",
                   ["exchange"], registry=REGISTRY)
FEED_RATE = Gauge("coby_feed_messages_per_second", "A venue's messages per second over 10 s: delivered (read by "
                  "coby), expected (those messages over the venue time they cover).", ["exchange", "kind"],
                  registry=REGISTRY)
EXCHANGE_CONNECTED = Gauge("coby_exchange_connected", "1 while a venue's connector is connected (a live feed), 0 "
                           "while it connects, is stale, disconnected or its circuit is open.", ["exchange"],
                           registry=REGISTRY)

# --- market (live only: a replay session's pipeline never sets these) ------------------------
BOOK_MID = Gauge("coby_book_mid_price", "Mid price of a venue's latest book at the last aggregation tick.",
                 ["exchange", "symbol"], registry=REGISTRY)
BOOK_SPREAD = Gauge("coby_book_spread", "Best ask minus best bid of a venue's latest book, in quote currency.",
                    ["exchange", "symbol"], registry=REGISTRY)
NBBO_BID = Gauge("coby_consolidated_best_bid", "Best bid over every fresh venue (the consolidated book).",
                 ["symbol"], registry=REGISTRY)
NBBO_ASK = Gauge("coby_consolidated_best_ask", "Best ask over every fresh venue (the consolidated book).",
                 ["symbol"], registry=REGISTRY)
IMBALANCE = Gauge("coby_imbalance", "Top-of-book imbalance, -1 (all asks) to 1 (all bids), per venue and "
                  "exchange=\"consolidated\".", ["exchange", "symbol"], registry=REGISTRY)

# --- replay and retention -------------------------------------------------------------------------
REPLAY_SESSIONS = Gauge("coby_replay_sessions", "Replay sessions active now (created, running or paused).",
                        registry=REGISTRY)
REPLAY_SESSIONS_MAX = Gauge("coby_replay_sessions_max", "The limit on active replay sessions (replay_max_sessions).",
                            registry=REGISTRY)
CLUSTER_UNCOVERED = Gauge("coby_cluster_uncovered_symbols", "Configured symbols no collector holds the lease of, "
                          "read from Redis when /metrics is scraped (roles collector and api; 0 in role all).",
                          registry=REGISTRY)
LEASES_OWNED = Gauge("coby_leases_owned", "Symbols this collector holds the ownership lease of (role collector; "
                     "docs/scaling.md).", registry=REGISTRY)
LEASES_REFUSED = Gauge("coby_leases_refused", "Symbols this collector wants that another collector owns (refused: "
                       "not connected here).", registry=REGISTRY)
LEASE_TAKEOVERS = Gauge("coby_lease_takeovers", "Symbols this collector took over after their lease expired, since "
                        "start.", registry=REGISTRY)
LEASES_LOST = Gauge("coby_leases_lost", "Leases this collector lost (taken by another, or not refreshed in time), "
                    "since start.", registry=REGISTRY)
RETENTION_DELETED = Counter("coby_retention_deleted_rows_total", "Rows deleted by the retention job (SQLite and "
                            "plain PostgreSQL; TimescaleDB drops whole chunks by its own policy).", ["table"],
                            registry=REGISTRY)
RETENTION_LAST_RUN = Gauge("coby_retention_last_run_timestamp_seconds", "When the retention job last finished a "
                           "pass over every table (epoch seconds; 0: never).", registry=REGISTRY)

# --- the process: resident memory, CPU, open files (process_* series) ------------------------------
ProcessCollector(registry=REGISTRY)

#: Label values known in advance, so that each series exists (at 0) from the start: an alert on a
#: rate, or a dashboard panel, sees 0 instead of no data.
REJECT_REASONS = ("schema", "range", "empty_book", "future_timestamp", "old_timestamp", "crossed_book",
                  "locked_book", "duplicate_trade", "malformed")
LOST_REASONS = ("journal_write_failed", "journal_stalled", "closed", "not_started")
CACHE_OPS = ("publish_dropped", "flush", "get", "read", "seq_conflict")
WS_DISCONNECT_REASONS = ("closed", "slow_consumer", "overload", "error", "shutdown")


def preset(exchanges: Iterable[str], tables: Iterable[str]) -> None:
    """Create the labelled series of a daemon's venues and tables, at 0 (idempotent)."""
    for ex in exchanges:
        for kind in ("book", "trade"):
            MESSAGES.labels(ex, kind)
        for reason in REJECT_REASONS:
            REJECTS.labels(ex, reason)
        for counter in (RECONNECTS, RESYNCS, STALLS):
            counter.labels(ex)
        CIRCUIT_OPEN.labels(ex)
        EXCHANGE_CONNECTED.labels(ex)
        for outcome in ("closed", "narrowed"):
            BACKFILL_GAPS.labels(ex, outcome)
        BACKFILL_TRADES.labels(ex)
        BACKFILL_RATE_LIMITED.labels(ex)
    for table in tables:
        for counter in (ROWS_WRITTEN, ROWS_DUPLICATE, FLUSH_FAILURES, RETENTION_DELETED, JOURNAL_SKIPPED):
            counter.labels(table)
        for gauge in (BUFFER_DEPTH, JOURNAL_BYTES):
            gauge.labels(table)
        for reason in LOST_REASONS:
            LOST_ROWS.labels(table, reason)
        OVERFLOW.labels(table, "rejected")
    for reason in WS_DISCONNECT_REASONS:
        WS_DISCONNECTS.labels(reason)
    WS_MESSAGES.labels("control")
    for op in CACHE_OPS:
        CACHE_ERRORS.labels(op)
