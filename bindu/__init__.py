"""bindu: an A2A agent server paid per task with x402."""

__version__ = "0.1.0"
