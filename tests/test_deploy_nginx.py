"""deploy/nginx/coby.conf, the load balancer of docker-compose.scale.yml, run for real (Debian's nginx) in front of
two API nodes: the configuration passes ``nginx -t``; REST and WebSocket go through it; when the node a
client's WebSocket is on goes away, coby's Python client reconnects through nginx, lands on the other node and
resumes its trades channel from its last seq - no gap, no repeat.

The only changes to the file are the addresses: the compose service names ``api-0:8080``/``api-1:8080`` and
``listen 8080`` become local ports. Skipped where nginx is not installed (scripts/test.sh installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from coby.cache import RedisCache
from coby.publisher import Publisher
from tests.api_fixtures import remote_api_node, serving, trade
from tests.conftest import REDIS_URL, free_port

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (scripts/test.sh installs it)")


def _config(tmp: Path, listen: int, a: int, b: int) -> Path:
    conf = (ROOT / "deploy/nginx/coby.conf").read_text()
    for old, new in (("api-0:8080", f"127.0.0.1:{a}"), ("api-1:8080", f"127.0.0.1:{b}"),
                     ("listen 8080;", f"listen 127.0.0.1:{listen};")):
        assert old in conf, old
        conf = conf.replace(old, new)
    (tmp / "coby.conf").write_text(conf)
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    main = tmp / "nginx.conf"
    main.write_text(f"""user root;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    include {tmp}/coby.conf;
}}
""")
    return main



async def test_nginx_in_front_of_two_api_nodes_a_client_losing_its_node_resumes_on_the_other(tmp_path, pg):
    from coby.client import CobyClient
    from coby.client_stream import Event, Gap, Reconnected
    r = aioredis.from_url(REDIS_URL)
    await r.flushdb()
    writer = RedisCache(REDIS_URL, interval=0.01)
    await writer.start()
    pub = Publisher(writer)  # a collector's publishing, as the pipeline does it
    cache_a, host_a = await remote_api_node(tmp_path, pg, "a")
    cache_b, host_b = await remote_api_node(tmp_path, pg, "b")
    trades = "trades:BTC-USDT"
    nginx = None
    try:
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(serving(host_a))
            b = await stack.enter_async_context(serving(host_b))
            port = free_port()
            conf = _config(tmp_path, port, a.server.port, b.server.port)
            check = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True,
                                   text=True, timeout=30)
            assert check.returncode == 0, check.stderr
            nginx = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
                                     stderr=subprocess.PIPE)
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                for _ in range(100):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"{url}/health") as resp:
                            if resp.status == 200:
                                break
                    await asyncio.sleep(0.1)
                async with http.get(f"{url}/api/v1/symbols") as resp:
                    assert resp.status == 200 and (await resp.json())["ok"]

            client = CobyClient(url, timeout=5.0, backoff_initial=0.1, backoff_max=0.5)
            items: list = []
            try:
                sub = client.stream([trades])
                it = sub.__aiter__()

                async def take() -> None:
                    while True:
                        items.append(await it.__anext__())

                reader = asyncio.create_task(take())
                await asyncio.sleep(1.0)  # subscribed, through nginx, on one of the nodes
                for i in range(50):
                    await pub.publish(trades, trade("BTC-USDT", "binance", i))
                async with asyncio.timeout(30):
                    while sum(isinstance(x, Event) for x in items) < 50:
                        await asyncio.sleep(0.05)
                # the node this client is on goes away (least_conn: the one with the open connection)
                busy = a if _clients(a) else b
                await busy.close()
                for i in range(50, 450):  # while the client reconnects
                    await pub.publish(trades, trade("BTC-USDT", "binance", i))
                async with asyncio.timeout(30):
                    while not any(isinstance(x, Reconnected) for x in items):
                        await asyncio.sleep(0.05)
                for i in range(450, 500):
                    await pub.publish(trades, trade("BTC-USDT", "binance", i))
                async with asyncio.timeout(30):
                    while not items or not isinstance(items[-1], Event) or items[-1].seq != 500:
                        await asyncio.sleep(0.05)
                reader.cancel()
                await sub.aclose()
            finally:
                await client.aclose()
            async with aiohttp.ClientSession() as http:  # REST still answers, from the node left
                async with http.get(f"{url}/api/v1/symbols") as resp:
                    assert resp.status == 200
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        for c in (cache_a, cache_b, writer):
            await c.aclose()
        await r.flushdb()
        await r.aclose()
    got = [x.seq for x in items if isinstance(x, Event)]
    assert [x for x in items if isinstance(x, Gap)] == []
    assert got == list(range(1, 501))


def _clients(test_client) -> int:
    """Open WebSocket connections of one API node (its app's client counter)."""
    from coby.api.rest import CLIENT_COUNT_KEY
    return test_client.app[CLIENT_COUNT_KEY]()
