"""turnout: progressive delivery for HTTP services that run as processes."""

__version__ = "0.1.0"
