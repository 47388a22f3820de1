"""Principals: the authenticated identities a task can be owned by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bindu.a2a import Task

# The agent card's securitySchemes names; a principal says which one let it in.
Scheme = Literal["apiKey", "bearer", "siwx"]


@dataclass(frozen=True)
class Principal:
    id: str  # "key:<name>", "jwt:<sub>" or "wallet:0x<lower-case address>": a task's owner
    scheme: Scheme


# A caller without credentials.
Caller = Principal | None


class AuthFailed(Exception):
    """Credentials were sent and refused (HTTP 401); the message says why, for the caller."""


class AuthUnavailable(Exception):
    """Credentials could not be checked right now (the JWKS is unreachable: HTTP 503)."""


def wallet(address: str) -> str:
    """The principal id of a wallet: how a payer owns the task it paid for."""
    return "wallet:" + address.lower()


def may_access(task: Task, caller: Caller) -> bool:
    """The owner alone reads, cancels and configures a task. A task without an owner (sent
    anonymously and unpaid) is a capability: whoever holds its id may use it."""
    if task.owner is None:
        return True
    return caller is not None and caller.id == task.owner


def owner_of_new_task(caller: Caller, payer: str | None) -> str | None:
    """The authenticated caller; else the wallet that paid; else nobody."""
    if caller is not None:
        return caller.id
    return wallet(payer) if payer else None
