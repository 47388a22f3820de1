"""Errors raised by the local devnet."""

from bindu.errors import BinduError


class DevnetError(BinduError):
    """The devnet could not start, or a chain call it made failed."""
