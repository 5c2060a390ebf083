"""GET /api/v1/heatmap/{symbol}/history: the consolidated book of stored snapshots in buckets of any width,
one column per step, through aiohttp's test client on the real app and through coby.client."""

from __future__ import annotations

from datetime import timedelta

from coby.client import CobyClient
from coby.models import utcnow
from tests.api_fixtures import Host, book, open_test_cache, serving
from tests.test_api import Schemas, get, settings

ROUTE = "/api/v1/heatmap/{symbol}"


async def test_heatmap_history_buckets_stored_snapshots_at_any_width(tmp_path, storage):
    """Two venues' snapshots every second for a minute: one column per step, each the sum of both venues'
    levels in buckets of the asked width (bids floor, asks ceil), with the venue count and best bid/ask; a
    finer width gives more rows; a venue silent for longer than stale_after drops out; a long range gets a
    longer step (at most 600 columns); bad parameters are 400s; the answer matches openapi.json."""
    cache = await open_test_cache("memory")
    host = Host(settings(tmp_path), storage, cache, {})
    t0 = utcnow().replace(microsecond=0) - timedelta(minutes=30)
    for i in range(60):
        await storage.store_orderbook(book("binance", "BTC-USDT", 100.0, ts=t0 + timedelta(seconds=i)))
        if i < 20:  # okx stops after 20 s
            await storage.store_orderbook(book("okx", "BTC-USDT", 101.0, ts=t0 + timedelta(seconds=i)))
    await storage.flush()
    start, end = int(t0.timestamp() * 1000), int((t0 + timedelta(seconds=60)).timestamp() * 1000)
    q = f"/api/v1/heatmap/BTC-USDT/history?start={start}&end={end}"
    try:
        async with serving(host) as client:
            schemas = Schemas(await get(client, "/api/v1/openapi.json"))
            coarse = await get(client, q, 200, schemas, ROUTE + "/history")
            assert coarse["bucket_size"] == coarse["configured_bucket_size"] == 10.0 and coarse["step"] == 1.0
            assert coarse["count"] == len(coarse["columns"]) == 60
            first = coarse["columns"][0]
            # binance: bids 99.5 .. 80.5, okx 100.5 .. 81.5 (1 + i each) -> buckets 100 (okx only), 90, 80
            assert [c[0] for c in first["bids"]] == [100.0, 90.0, 80.0]
            assert first["bids"][0][2] == 1 and first["bids"][1][2] == 2
            assert first["best_bid"] == 100.5 and first["best_ask"] == 100.5
            assert abs(sum(c[1] for c in first["bids"]) - 2 * sum(1.0 + i for i in range(20))) < 1e-9
            late = coarse["columns"][-1]  # okx is 40 s old there, beyond stale_after (10 s)
            assert late["best_bid"] == 99.5 and all(c[2] == 1 for c in late["bids"] + late["asks"])

            fine = await get(client, q + "&bucket_size=1&step=5", 200, schemas, ROUTE + "/history")
            assert fine["step"] == 5.0 and fine["count"] == 12
            assert len(fine["columns"][0]["bids"]) == 21 > len(first["bids"])
            assert fine["columns"][0]["bids"][0][0] == 100.0 and fine["columns"][0]["asks"][0][0] == 101.0

            odd = await get(client, q + "&bucket_size=0.1234567891234", 200)
            assert odd["bucket_size"] == 0.123456789  # rounded to the 1e-9 grid prices live on
            hour = await get(client, f"/api/v1/heatmap/BTC-USDT/history?start={end - 3_600_000}&end={end}", 200)
            assert hour["step"] == 6.0 and hour["count"] <= 600

            for bad in ("bucket_size=0", "bucket_size=nan", "bucket_size=5e-324", "bucket_size=1e10", "step=0.1", "step=x", "depth=3",
                        f"start={end}", f"start={end - 3_600_001}"):
                await get(client, f"/api/v1/heatmap/BTC-USDT/history?end={end}&{bad}", 400, schemas, ROUTE + "/history")
            await get(client, "/api/v1/heatmap/NOPE-USDT/history", 404)

            async with CobyClient(str(client.make_url(""))) as coby:
                via_client = await coby.heatmap_history("BTC-USDT", start, end, bucket_size=1, step=5)
            assert via_client["columns"] == fine["columns"]
    finally:
        await cache.aclose()
