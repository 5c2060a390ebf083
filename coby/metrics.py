"""Prometheus metrics: every metric coby exports is declared here, once, on one registry.

Modules import the metric objects they update; ``/metrics`` renders ``REGISTRY``.
Labels are bounded sets (exchange, symbol, table, reason, channel) - never ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
