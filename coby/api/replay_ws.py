"""Replay over WebSocket: a session's bus served with the live protocol of ``coby.api.ws``.

``GET /api/v1/replay/{id}/ws`` speaks exactly the protocol of ``/ws`` (``coby.api.ws.serve``:
subscribe/unsubscribe/ping, snapshots, the pipeline's envelopes byte for byte - each carrying
``"replay": id``), so a client written for live data runs unchanged against a replay; only
the URL differs. Subscribe first, then ``POST /api/v1/replay/{id}/start``.

One ``ReplayHub`` per session fans its bus out. It differs from the live ``coby.api.hub.Hub`` in what a
slow client costs, because a replay can wait where live data cannot:

- every message is delivered, book-like channels included (no coalescing: a replay shows
  every stored state);
- a client that falls ``ws_queue_size`` messages behind holds the pump - and through the
  session's bus the whole session - back until it catches up, instead of being disconnected:
  at speed 0 the replay runs as fast as its slowest client reads;
- when the session ends, each client is sent what it has not received yet and is then
  closed with 1001 ("replay finished").
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from coby.api import ws
from coby.api.params import ApiError
from coby.api.hub import Hub
from coby.api.replay_bus import END

REPLAY_HUBS_KEY: web.AppKey[dict] = web.AppKey("replay_hubs", dict)
_POLL = 0.001  # seconds between looks at a full client queue (ws.Client has no "room again" signal)


class ReplayHub(Hub):
    """``coby.api.hub.Hub`` for one replay session: waits for slow clients instead of dropping them."""

    def __init__(self, session: Any, registry: dict[str, "ReplayHub"]) -> None:
        super().__init__(session.bus, bus_queue=session.settings.replay_queue_size)
        self.session = session
        self.registry = registry
        self._watcher = asyncio.get_running_loop().create_task(self._close_when_done(),
                                                               name=f"coby-replay-hub-{session.id}")

    def attach(self, client: Any, channel: str) -> Any:
        feed = super().attach(client, channel)
        feed.coalesce = False  # every replayed state is delivered, in order
        return feed

    async def _pump(self, feed: Any) -> None:
        queue = feed.sub.queue
        while True:
            item = await queue.get()
            if item is END:
                return
            payload = item[1]
            for client in tuple(feed.clients):
                while len(client.queue) >= client.max_queue and client.failure is None:
                    await asyncio.sleep(_POLL)
                if client.failure is None:
                    client.offer_queued(feed, payload)

    def _drained(self) -> bool:
        if any(not f.sub.queue.empty() and not (f.task is None or f.task.done()) for f in self._feeds.values()):
            return False
        return all(c.failure is not None or not (c.queue or c.latest or c.control or c.held) for c in self.clients)

    async def _close_when_done(self) -> None:
        try:
            await self.session.done.wait()
            while self.clients and not self._drained():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # let the senders hand the last frames over
        finally:
            self.registry.pop(self.session.id, None)
        await super().aclose(f"replay {self.session.state.value}")

    async def aclose(self, message: str = "server shutting down") -> None:
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher
        await super().aclose(message)


def hub_for(app: web.Application, session: Any) -> ReplayHub:
    """The session's hub on ``app`` (created at its first WebSocket client)."""
    hubs = app[REPLAY_HUBS_KEY]
    hub = hubs.get(session.id)
    if hub is None:
        hub = hubs[session.id] = ReplayHub(session, hubs)
    return hub


async def serve_replay(request: web.Request, session: Any) -> web.StreamResponse:
    """Run the live WebSocket protocol over ``session``'s bus (see the module docstring)."""
    if not session.active:
        raise ApiError(409, f"replay {session.id} has {session.state.value}: nothing more to stream")
    for key in request.query:
        if key != "token":
            raise ApiError(400, f"unknown parameter {key[:40]!r}; allowed: token")
    if ws.CONNECTIONS_KEY not in request.app:
        raise ApiError(503, "WebSocket is not enabled on this server")
    return await ws.serve(request, hub_for(request.app, session), session.settings)


def install(app: web.Application) -> None:
    """Prepare ``app`` for replay hubs: a registry, closed at shutdown."""
    if REPLAY_HUBS_KEY in app:
        return
    app[REPLAY_HUBS_KEY] = {}

    async def close_hubs(app: web.Application) -> None:
        hubs = list(app[REPLAY_HUBS_KEY].values())
        await asyncio.gather(*(h.aclose("server shutting down") for h in hubs), return_exceptions=True)

    app.on_shutdown.append(close_hubs)
