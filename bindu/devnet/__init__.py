"""The local devnet: anvil, our EIP-3009 token, the SDK facilitator with faults, a paying client."""

from bindu.devnet.client import PaidResponse, PayingClient
from bindu.devnet.errors import DevnetError
from bindu.devnet.faults import FacilitatorStats, FaultSwitch
from bindu.devnet.stack import Devnet, DevnetInfo

__all__ = [
    "Devnet",
    "DevnetError",
    "DevnetInfo",
    "FacilitatorStats",
    "FaultSwitch",
    "PaidResponse",
    "PayingClient",
]
