"""coby: a multi-exchange crypto market-data aggregator."""

__version__ = "0.1.0"
