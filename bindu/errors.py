"""One exception root for everything bindu raises on purpose."""


class BinduError(Exception):
    """Root of bindu's own exceptions."""


class SettingsError(BinduError):
    """A setting is missing or malformed; the message names the variable."""


class StorageError(BinduError):
    """Storage could not do what was asked (not a missing row: those return None)."""


class AgentLoadError(BinduError):
    """The agent named by MODULE:ATTR could not be imported."""
