"""gateway: a reverse proxy and multi-protocol front door on Twisted."""

__version__ = "0.1.0"
