"""One exception root for everything bindu raises on purpose."""


class BinduError(Exception):
    """Root of bindu's own exceptions."""


class SettingsError(BinduError):
    """A setting is missing or malformed; the message names the variable."""


class StorageError(BinduError):
    """Storage could not do what was asked (not a missing row: those return None)."""


class RefundTxTaken(StorageError):
    """A refund transaction is already booked as the refund of another payment."""

    def __init__(self, network: str, tx: str, holder: str) -> None:
        super().__init__(f"transaction {tx} is already the refund of payment {holder}")
        self.network, self.tx, self.holder = network, tx, holder


class IllegalTransition(StorageError):
    """A payment write along an edge the lifecycle table does not have; nothing was written."""


class AgentLoadError(BinduError):
    """The agent named by MODULE:ATTR could not be imported."""
