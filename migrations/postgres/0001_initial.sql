-- coby schema v1: the design's four tables (with a few added columns) and connection events.
-- Works on plain PostgreSQL; coby.db.timescale turns the tables into hypertables where
-- the TimescaleDB extension is available. Every primary key starts with "timestamp",
-- which TimescaleDB requires of unique keys on a hypertable.

CREATE TABLE IF NOT EXISTS order_book_snapshots (
    id BIGSERIAL,
    symbol VARCHAR(20) NOT NULL,
    exchange VARCHAR(20) NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    bids JSONB NOT NULL,             -- [[price, size], ...] best first
    asks JSONB NOT NULL,
    sequence_id BIGINT,
    mid_price DECIMAL(20,8),
    spread DECIMAL(20,8),
    bid_volume DECIMAL(30,8),
    ask_volume DECIMAL(30,8),
    received_at TIMESTAMPTZ,         -- added: coby's receive time
    PRIMARY KEY (timestamp, symbol, exchange)
);

CREATE TABLE IF NOT EXISTS trade_events (
    id BIGSERIAL,
    symbol VARCHAR(20) NOT NULL,
    exchange VARCHAR(20) NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    price DECIMAL(20,8) NOT NULL,
    size DECIMAL(30,8) NOT NULL,
    side VARCHAR(4) NOT NULL,
    trade_id VARCHAR(100) NOT NULL,
    received_at TIMESTAMPTZ,         -- added: coby's receive time
    PRIMARY KEY (timestamp, symbol, exchange, trade_id)
);

CREATE TABLE IF NOT EXISTS heatmap_data (
    symbol VARCHAR(20) NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    bucket_size DECIMAL(10,2) NOT NULL,
    price_bucket DECIMAL(20,8) NOT NULL,
    volume DECIMAL(30,8) NOT NULL,
    side VARCHAR(3) NOT NULL,
    exchange_count INTEGER NOT NULL,
    PRIMARY KEY (timestamp, symbol, bucket_size, price_bucket, side)
);

CREATE TABLE IF NOT EXISTS ohlcv_data (
    symbol VARCHAR(20) NOT NULL,
    exchange VARCHAR(20) NOT NULL DEFAULT 'consolidated',   -- added: venue, or 'consolidated'
    timestamp TIMESTAMPTZ NOT NULL,
    timeframe VARCHAR(10) NOT NULL,
    open_price DECIMAL(20,8) NOT NULL,
    high_price DECIMAL(20,8) NOT NULL,
    low_price DECIMAL(20,8) NOT NULL,
    close_price DECIMAL(20,8) NOT NULL,
    volume DECIMAL(30,8) NOT NULL,
    trade_count INTEGER,
    vwap DECIMAL(20,8),              -- added
    buy_volume DECIMAL(30,8),        -- added
    sell_volume DECIMAL(30,8),       -- added
    PRIMARY KEY (timestamp, symbol, exchange, timeframe)
);

-- Added: every change of a feed's state, so that gaps in the data are explicit.
CREATE TABLE IF NOT EXISTS connection_events (
    timestamp TIMESTAMPTZ NOT NULL,
    exchange VARCHAR(20) NOT NULL,
    symbol VARCHAR(20) NOT NULL DEFAULT '',
    event VARCHAR(20) NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (timestamp, exchange, symbol, event)
);

-- Time-range queries per symbol (the primary keys lead with timestamp).
CREATE INDEX IF NOT EXISTS order_book_snapshots_symbol_ts ON order_book_snapshots (symbol, exchange, timestamp DESC);
CREATE INDEX IF NOT EXISTS trade_events_symbol_ts ON trade_events (symbol, timestamp DESC);
CREATE INDEX IF NOT EXISTS ohlcv_data_symbol_tf_ts ON ohlcv_data (symbol, timeframe, exchange, timestamp DESC);
CREATE INDEX IF NOT EXISTS heatmap_data_symbol_ts ON heatmap_data (symbol, timestamp DESC);
