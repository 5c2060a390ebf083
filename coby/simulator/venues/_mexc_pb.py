"""MEXC's protobuf push frames, encoded with the gencode ccxt ships (``ccxt.protobuf.mexc``).

The server side of what ccxt's ``decode_proto_msg`` reads: a ``PushDataV3ApiWrapper``
with ``channel``, ``symbol``, ``sendTime`` and one body, here ``publicAggreDepths`` or
``publicAggreDeals``. Needs ``protobuf`` 5.29.x, like ccxt itself.
"""

from __future__ import annotations

from ccxt.protobuf.mexc import PushDataV3ApiWrapper_pb2 as wrapper_pb2
from ccxt.protobuf.mexc.PublicAggreDealsV3Api_pb2 import PublicAggreDealsV3Api, PublicAggreDealsV3ApiItem
from ccxt.protobuf.mexc.PublicAggreDepthsV3Api_pb2 import PublicAggreDepthsV3Api, PublicAggreDepthV3ApiItem

#: Not a protobuf message: field 1 declared length-delimited with a length past the end.
MALFORMED = b"\x0a\xff\xff\x03spot@public"

BUY, SELL = 1, 2  # tradeType


def encode_depth(event_type: str, market_id: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]],
                 version: int, ts_ms: int) -> bytes:
    """One aggregated depth frame; ``event_type`` is the channel without the symbol."""
    body = PublicAggreDepthsV3Api(
        asks=[PublicAggreDepthV3ApiItem(price=p, quantity=q) for p, q in asks],
        bids=[PublicAggreDepthV3ApiItem(price=p, quantity=q) for p, q in bids],
        eventType=event_type,
        fromVersion=str(version),
        toVersion=str(version),
    )
    msg = wrapper_pb2.PushDataV3ApiWrapper(
        channel=f"{event_type}@{market_id}", symbol=market_id, sendTime=ts_ms, publicAggreDepths=body
    )
    return msg.SerializeToString()


def encode_deals(event_type: str, market_id: str, deals: list[tuple[str, str, str, int]], ts_ms: int) -> bytes:
    """One aggregated deals frame; each deal is (price, quantity, taker side, time ms)."""
    body = PublicAggreDealsV3Api(
        deals=[
            PublicAggreDealsV3ApiItem(price=p, quantity=q, tradeType=BUY if side == "buy" else SELL, time=t)
            for p, q, side, t in deals
        ],
        eventType=event_type,
    )
    msg = wrapper_pb2.PushDataV3ApiWrapper(
        channel=f"{event_type}@{market_id}", symbol=market_id, sendTime=ts_ms, publicAggreDeals=body
    )
    return msg.SerializeToString()
