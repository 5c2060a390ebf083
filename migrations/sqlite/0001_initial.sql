-- coby schema v1 for SQLite: the same tables and keys as migrations/postgres/0001_initial.sql.
-- Timestamps are INTEGER microseconds since the Unix epoch (UTC); prices REAL; books JSON text.

CREATE TABLE IF NOT EXISTS order_book_snapshots (
    symbol TEXT NOT NULL,
    exchange TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    bids TEXT NOT NULL,
    asks TEXT NOT NULL,
    sequence_id INTEGER,
    mid_price REAL,
    spread REAL,
    bid_volume REAL,
    ask_volume REAL,
    received_at INTEGER,
    PRIMARY KEY (timestamp, symbol, exchange)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS trade_events (
    symbol TEXT NOT NULL,
    exchange TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    price REAL NOT NULL,
    size REAL NOT NULL,
    side TEXT NOT NULL,
    trade_id TEXT NOT NULL,
    received_at INTEGER,
    PRIMARY KEY (timestamp, symbol, exchange, trade_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS heatmap_data (
    symbol TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    bucket_size REAL NOT NULL,
    price_bucket REAL NOT NULL,
    volume REAL NOT NULL,
    side TEXT NOT NULL,
    exchange_count INTEGER NOT NULL,
    PRIMARY KEY (timestamp, symbol, bucket_size, price_bucket, side)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS ohlcv_data (
    symbol TEXT NOT NULL,
    exchange TEXT NOT NULL DEFAULT 'consolidated',
    timestamp INTEGER NOT NULL,
    timeframe TEXT NOT NULL,
    open_price REAL NOT NULL,
    high_price REAL NOT NULL,
    low_price REAL NOT NULL,
    close_price REAL NOT NULL,
    volume REAL NOT NULL,
    trade_count INTEGER,
    vwap REAL,
    buy_volume REAL,
    sell_volume REAL,
    PRIMARY KEY (timestamp, symbol, exchange, timeframe)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS connection_events (
    timestamp INTEGER NOT NULL,
    exchange TEXT NOT NULL,
    symbol TEXT NOT NULL DEFAULT '',
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (timestamp, exchange, symbol, event)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS order_book_snapshots_symbol_ts ON order_book_snapshots (symbol, exchange, timestamp);
CREATE INDEX IF NOT EXISTS trade_events_symbol_ts ON trade_events (symbol, timestamp);
CREATE INDEX IF NOT EXISTS ohlcv_data_symbol_tf_ts ON ohlcv_data (symbol, timeframe, exchange, timestamp);
CREATE INDEX IF NOT EXISTS heatmap_data_symbol_ts ON heatmap_data (symbol, timestamp);
