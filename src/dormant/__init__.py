"""dormant: per-user containers that run only while people use them."""

__version__ = "0.1.0"
