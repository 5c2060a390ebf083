"""The one translation of what ccxt (and its transport) raise into coby's exceptions (:mod:`coby.errors`).

Two places see ccxt's exceptions, and both come here: a stream's watch loop
(:func:`translate_ccxt_error`) and the frame guard on every ccxt connection
(:func:`translate_frame_error`, for what escapes ccxt's receive loop). The
connector (:mod:`coby.exchanges`) applies the failure policy to the result.
"""

from __future__ import annotations

import ccxt

from coby.errors import (BookOutOfSync, ExchangeError, PermanentExchangeError, RateLimited,
                         TemporaryExchangeError)
from coby.collector.feeds import PARSE_ERRORS

# Retrying cannot help: a wrong symbol mapping, a call the venue lacks, credentials, configuration.
_PERMANENT = (ccxt.BadSymbol, ccxt.NotSupported, ccxt.AuthenticationError, ccxt.ArgumentsRequired,
              ccxt.InvalidProxySettings)


def translate_ccxt_error(exchange: str, exc: BaseException) -> ExchangeError:
    """The one translation of ccxt's (and the transport's) exceptions into coby's."""
    if isinstance(exc, ExchangeError):
        return exc
    if isinstance(exc, (ccxt.ChecksumError, ccxt.InvalidNonce)):
        cls: type[ExchangeError] = BookOutOfSync
    elif isinstance(exc, (ccxt.DDoSProtection, ccxt.RateLimitExceeded)):
        cls = RateLimited
    elif isinstance(exc, _PERMANENT):
        cls = PermanentExchangeError
    else:  # NetworkError, RequestTimeout, ExchangeNotAvailable, other ccxt errors, OSError, timeouts, bugs
        cls = TemporaryExchangeError
    err = cls(exchange, f"{type(exc).__name__}: {exc}"[:300])
    err.__cause__ = exc
    return err


def local_resync(exchange: str, detail: str) -> BookOutOfSync:
    """A resync coby decided on (ccxt does not know its book is wrong): always recycle the client."""
    err = BookOutOfSync(exchange, detail)
    err.local = True  # type: ignore[attr-defined]
    return err


def translate_frame_error(exchange: str, exc: Exception, sequenced: bool) -> tuple[str | None, ExchangeError | None]:
    """What an exception caught by the frame guard means: (why the frame counts as ``malformed``, if it
    does; the error that wakes the connection's watchers, None if dropping the frame is enough)."""
    if isinstance(exc, PARSE_ERRORS) and not isinstance(exc, ccxt.BaseError):
        # dropped where the venue's sequence numbers or checksum catch a lost book update
        err = None if sequenced else local_resync(exchange, "unparseable frame on a feed without sequence numbers")
        return f"unparseable frame: {exc!r}", err
    if isinstance(exc, ccxt.BaseError):
        err = translate_ccxt_error(exchange, exc)
        return None, local_resync(exchange, f"ccxt handler raised {err}") if isinstance(err, BookOutOfSync) else err
    return f"handler failed: {exc!r}", local_resync(exchange, f"handler failed on a frame: {exc!r}"[:300])
