-- coby schema v2: every number is DOUBLE PRECISION, as coby holds it (and as SQLite stores it).
--
-- Why: v1's DECIMAL(p,s) columns rounded what coby wrote. heatmap_data.bucket_size was
-- DECIMAL(10,2): buckets of 0.001 and 0.000001 were stored as 0.00 (and sizes under 0.005
-- collided in the primary key); price_bucket and the prices at scale 8 cut buckets finer than
-- 1e-8, mid prices between two 1e-8 ticks and every VWAP. coby's numbers are IEEE doubles from
-- the venue's JSON to the API (ccxt's floats, the models' floats, the float8 staging table), so
-- float8 columns store exactly the value coby had, at any magnitude (a 1e-8 tick, a 1e-6 bucket,
-- a 100,000,000-unit size, a 100,000 price), with no rounding on the way in or out.
--
-- TimescaleDB: a column's type cannot change on a hypertable with compression enabled. Where it is
-- enabled, the compression policy is removed, compressed chunks are decompressed and compression
-- is switched off here; coby.db.timescale (run after the migrations) switches it on again with its
-- policy, which compresses the old chunks again in the background. The decompressed chunks need
-- their uncompressed disk space meanwhile, and ALTER ... TYPE rewrites each table: on a large
-- database run `coby migrate` in a maintenance window, with the disk space at hand.

DO $$
DECLARE
    t text;
BEGIN
    IF to_regclass('timescaledb_information.hypertables') IS NULL THEN
        RETURN;  -- plain PostgreSQL
    END IF;
    FOR t IN EXECUTE 'SELECT hypertable_name::text FROM timescaledb_information.hypertables '
                     'WHERE compression_enabled AND hypertable_schema = current_schema() '
                     'AND hypertable_name IN (''order_book_snapshots'', ''trade_events'', ''heatmap_data'', '
                     '''ohlcv_data'')'
    LOOP
        PERFORM remove_compression_policy(t::regclass, if_exists => TRUE);
        PERFORM decompress_chunk(c, if_compressed => TRUE) FROM show_chunks(t::regclass) AS c;
        EXECUTE format('ALTER TABLE %I SET (timescaledb.compress = false)', t);
    END LOOP;
END
$$;

ALTER TABLE order_book_snapshots
    ALTER COLUMN mid_price TYPE DOUBLE PRECISION,
    ALTER COLUMN spread TYPE DOUBLE PRECISION,
    ALTER COLUMN bid_volume TYPE DOUBLE PRECISION,
    ALTER COLUMN ask_volume TYPE DOUBLE PRECISION;

ALTER TABLE trade_events
    ALTER COLUMN price TYPE DOUBLE PRECISION,
    ALTER COLUMN size TYPE DOUBLE PRECISION;

ALTER TABLE heatmap_data
    ALTER COLUMN bucket_size TYPE DOUBLE PRECISION,
    ALTER COLUMN price_bucket TYPE DOUBLE PRECISION,
    ALTER COLUMN volume TYPE DOUBLE PRECISION;

ALTER TABLE ohlcv_data
    ALTER COLUMN open_price TYPE DOUBLE PRECISION,
    ALTER COLUMN high_price TYPE DOUBLE PRECISION,
    ALTER COLUMN low_price TYPE DOUBLE PRECISION,
    ALTER COLUMN close_price TYPE DOUBLE PRECISION,
    ALTER COLUMN volume TYPE DOUBLE PRECISION,
    ALTER COLUMN vwap TYPE DOUBLE PRECISION,
    ALTER COLUMN buy_volume TYPE DOUBLE PRECISION,
    ALTER COLUMN sell_volume TYPE DOUBLE PRECISION;
