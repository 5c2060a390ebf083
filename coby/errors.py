"""coby's exceptions. ccxt's exceptions are translated into these once, in ``coby.collector.ccxterrors``."""

from __future__ import annotations


class CobyError(Exception):
    """Base of every error coby raises on purpose."""


class ConfigError(CobyError):
    """An invalid setting: the message names it. The CLI exits with code 2."""


class StorageError(CobyError):
    """The database refused or failed an operation."""


class StorageUnavailable(StorageError):
    """The database cannot be reached right now (transient: retry with backoff)."""


class StorageRefused(StorageError):
    """The database refused a batch for its content (a value out of range, a constraint): the bad rows
    are isolated and set aside. Never raised for connection, timeout, pool or shutdown trouble."""


class CacheError(CobyError):
    """The cache failed an operation."""


class ExchangeError(CobyError):
    """A venue feed failed. ``retryable`` says whether backing off and retrying may help."""

    retryable = True

    def __init__(self, exchange: str, message: str) -> None:
        super().__init__(f"{exchange}: {message}")
        self.exchange = exchange


class TemporaryExchangeError(ExchangeError):
    """Network trouble, timeouts, a venue that is briefly unavailable."""


class RateLimited(TemporaryExchangeError):
    """The venue asked us to slow down (DDoS protection, 429)."""


class BookOutOfSync(TemporaryExchangeError):
    """A sequence gap, nonce or checksum error: the book must be resynced from a snapshot."""


class StaleFeed(TemporaryExchangeError):
    """No update within the staleness threshold: the feed is silently stalled."""


class QuietTrades(TemporaryExchangeError):
    """Trades quiet for ``trade_stale_after`` while the symbol's book flows: probably a quiet market, maybe a
    subscription the venue forgot. Their feed is resubscribed; not a failure (no event, no breaker count)."""


class PermanentExchangeError(ExchangeError):
    """Retrying will not help (unknown symbol, unsupported call, bad configuration)."""

    retryable = False


class ReplayError(CobyError):
    """A replay session request is invalid or the session is in the wrong state for it."""


class ValidationError(CobyError):
    """A normalised item failed validation. ``reason`` is the metric label it is counted under."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


class ClientError(CobyError):
    """``coby.client``: coby's API refused a request (the message is the server's ``error`` text) or could
    not be reached. ``status`` is the HTTP status (None: no answer); ``retryable`` whether trying again
    later may help (no answer, 429, 5xx)."""

    def __init__(self, message: str, status: int | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = (status is None or status == 429 or status >= 500) if retryable is None else retryable


class AuthError(ClientError):
    """``coby.client``: the API refused the bearer token (401): missing, or not the daemon's ``api_token``."""
