"""Settings from the environment (nested delimiter ``__``, optional ``.env``).

``load_settings`` turns pydantic's validation report into one line that names the
environment variable, so a bad deployment stops with a message an operator can act on.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bindu.errors import SettingsError

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_CAIP2_EVM = re.compile(r"^eip155:[0-9]+$")
# Methods whose work is settle-first; others have no unit of work to charge for.
PAYABLE_METHODS = frozenset({"message/send"})


class StorageSettings(BaseModel):
    url: str = "sqlite:///bindu.db"
    # Postgres only: the schema that holds bindu's tables (created when missing).
    schema_name: str = Field(default="public", alias="schema")
    pool_size: int = Field(default=10, ge=1, le=200)

    model_config = {"populate_by_name": True}

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not (
            value.startswith("sqlite:///")
            or value == "memory://"
            or value.startswith(("postgresql://", "postgres://"))
        ):
            raise ValueError("must start with sqlite:///, postgresql:// or be memory://")
        return value

    @field_validator("schema_name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
            raise ValueError("must be a lower-case SQL identifier")
        return value


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=3773, ge=0, le=65535)
    url: str | None = None  # public URL for the agent card; defaults to http://host:port
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    workers: int = Field(default=4, ge=1, le=256)
    # message/send with blocking=true waits at most this long before returning the task.
    blocking_timeout_seconds: float = Field(default=60.0, gt=0)
    agent_name: str = "bindu agent"
    agent_description: str = "An agent served by bindu, paid per task with x402."
    # The durable task queue (issue 9). message/send answers 503 beyond this many
    # submitted tasks, before any payment work.
    max_queued: int = Field(default=1000, ge=1, le=10_000_000)
    # SIGTERM: runs in flight get this long to finish; then paid ones end in a verdict.
    shutdown_grace_seconds: float = Field(default=30.0, ge=0, le=86_400)
    # A worker's hold on a task, renewed while it runs; once it expires another takes it.
    task_lease_seconds: float = Field(default=30.0, ge=1, le=86_400)
    # How often idle workers look for tasks queued by other replicas or left by a crash.
    queue_poll_seconds: float = Field(default=1.0, gt=0, le=3600)
    # lifecycle: the agent's time budget per task; a paid run not delivered within it (plus
    # a margin) is the reconciler's (orphaned, or re-run when the agent is idempotent).
    agent_timeout_seconds: float = Field(default=300.0, gt=0)
    # lifecycle: the agent may safely run twice for one task (fulfill may re-deliver).
    agent_idempotent: bool = False

    # input: hostile-input bounds (JSON-RPC bodies are refused past these, before parsing)
    max_json_depth: int = Field(default=32, ge=4, le=256)

    @property
    def resource_url(self) -> str:
        """The JSON-RPC endpoint's public URL (the x402 resource, the sign-in origin)."""
        return (self.url or f"http://{self.host}:{self.port}").rstrip("/") + "/"

    @field_validator("url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        # Payers sign in to this URL's origin, and pay for it as the x402 resource.
        if value is None:
            return None
        parsed = urlparse(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("must be an http(s) URL such as https://agent.example.com")
        if parsed.username or parsed.password or parsed.query or parsed.fragment:
            raise ValueError("must not carry credentials, a query or a fragment")
        return value


class ReconciliationSettings(BaseModel):
    enabled: bool = True
    interval_seconds: float = Field(default=10.0, gt=0)
    batch_size: int = Field(default=50, ge=1, le=10_000)
    concurrency: int = Field(default=8, ge=1, le=1024)
    max_attempts: int = Field(default=12, ge=1, le=1000)
    policy: Literal["record", "fulfill"] = "record"
    webhook_url: str | None = None
    # How long a replica may hold a claimed payment before another may take it.
    lease_seconds: float = Field(default=60.0, gt=0)
    # A payment-verified record older than settle timeout + this margin is presumed abandoned.
    stale_margin_seconds: float = Field(default=30.0, ge=0)
    # fulfill policy: a fulfilment silent this long is presumed dead (its agent never re-runs).
    fulfil_timeout_seconds: float = Field(default=600.0, gt=0)
    # fulfill policy: settle an unused authorization only once it is this old (seconds).
    collect_after_seconds: float = Field(default=60.0, ge=0)


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RateLimitSettings(BaseModel):
    """Token buckets for refused payments (X402__RATE_LIMIT__…); successful payments never
    draw on them. Burst = bucket size, per minute = refill rate."""

    client_burst: int = Field(default=20, ge=1, le=1_000_000)
    client_per_minute: float = Field(default=10.0, gt=0)
    # Charged only for refusals of payments whose signature proved the payer (see paywall).
    payer_burst: int = Field(default=10, ge=1, le=1_000_000)
    payer_per_minute: float = Field(default=5.0, gt=0)
    # Signatures no local check can judge (smart wallets: ERC-1271/6492) reach the facilitator
    # only through this one server-wide bucket; burst 0 refuses them.
    smart_wallet_burst: int = Field(default=20, ge=0, le=1_000_000)
    smart_wallet_per_minute: float = Field(default=30.0, gt=0)
    # Peers whose X-Forwarded-For is believed (IPs or CIDRs, comma-separated); none by default.
    trusted_proxies: Annotated[list[IpNetwork], NoDecode] = Field(default_factory=list)
    # IPv6 clients share a bucket per prefix: one host usually holds a whole /64.
    ipv6_prefix: int = Field(default=64, ge=16, le=128)
    # Buckets remembered per kind; past this the least recently charged are forgotten.
    max_tracked: int = Field(default=100_000, ge=100, le=10_000_000)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            try:
                return [ipaddress.ip_network(str(v), strict=False) for v in value]
            except ValueError as exc:
                raise ValueError(f"must be comma-separated IPs or CIDRs ({exc})") from exc
        return value


class X402Settings(BaseModel):
    facilitator_url: str | None = None
    pay_to: str | None = None
    network: str = "eip155:84532"
    asset: str | None = None
    amount: int = Field(default=10_000, gt=0)
    asset_name: str = "USD Coin"
    asset_version: str = "2"
    max_timeout_seconds: int = Field(default=300, ge=10)
    settle_timeout_seconds: float = Field(default=15.0, gt=0)
    verify_timeout_seconds: float = Field(default=15.0, gt=0)
    rpc_timeout_seconds: float = Field(default=10.0, gt=0)
    # Keep listening this long for a settle answer after the settle deadline (DESIGN §7).
    late_answer_seconds: float = Field(default=60.0, ge=0)
    protected_methods: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["message/send"]
    )
    # NoDecode: our validator parses the JSON so a typo is reported under its own name.
    rpc_urls: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    confirmations: int = Field(default=1, ge=0, le=1000)
    reconciliation: ReconciliationSettings = Field(default_factory=ReconciliationSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)

    @property
    def enabled(self) -> bool:
        return self.pay_to is not None

    @field_validator("pay_to", "asset")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None and not _ADDRESS.match(value):
            raise ValueError("must be a 0x-prefixed 20-byte hex address")
        return value

    @field_validator("protected_methods", mode="before")
    @classmethod
    def _methods_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [m.strip() for m in value.split(",") if m.strip()]
        if isinstance(value, list) and not value:
            # Empty would advertise x402 on the card while every call is free.
            raise ValueError(
                "must name at least one method (message/send); unset it for the default"
            )
        if isinstance(value, list) and not set(value) <= PAYABLE_METHODS:
            raise ValueError(f"only {sorted(PAYABLE_METHODS)} can be paid for")
        return value

    @field_validator("network")
    @classmethod
    def _caip2(cls, value: str) -> str:
        if not _CAIP2_EVM.match(value):
            raise ValueError("must be a CAIP-2 EVM network such as eip155:8453")
        return value

    @field_validator("rpc_urls", mode="before")
    @classmethod
    def _rpc_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON object of network to URL ({exc.msg})") from exc
        if isinstance(value, dict):
            for network, url in value.items():
                if not _CAIP2_EVM.match(str(network)):
                    raise ValueError(f"key {network!r} is not a CAIP-2 EVM network")
                if not str(url).startswith(("http://", "https://")):
                    raise ValueError(f"URL for {network} must be http(s)")
        return value

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> X402Settings:
        if self.pay_to is not None:
            if not self.facilitator_url:
                raise ValueError("facilitator_url: required when X402__PAY_TO is set")
            if not self.asset:
                raise ValueError("asset: required when X402__PAY_TO is set")
            if self.reconciliation.policy == "fulfill" and self.network not in self.rpc_urls:
                # A facilitator cannot tell a used authorization from one the payer
                # canceled: delivering on its word alone would work for free (DESIGN §7).
                raise ValueError(
                    "reconciliation__policy: fulfill needs chain proof; set X402__RPC_URLS"
                    f" for {self.network} or use the record policy"
                )
        return self


class MetricsSettings(BaseModel):
    """Who may read ``/metrics``. Secure by default: served nowhere until the operator picks
    a bearer token (checked on the main app) or a listener of its own (e.g. on loopback)."""

    token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535)
    # Payment gauges come from a GROUP BY over payments: refreshed this often in the
    # background, never per scrape.
    refresh_seconds: float = Field(default=15.0, gt=0)

    @field_validator("token", mode="before")
    @classmethod
    def _strong_token(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None
            if len(value) < 16 or not value.isascii() or any(c.isspace() for c in value):
                raise ValueError("must be at least 16 printable ASCII characters, no spaces")
        return value

    @property
    def served(self) -> bool:
        return self.port is not None or self.token is not None


# Auth (issue 10): who a caller is. API keys are stored as the SHA-256 of the key, never
# the key; JWTs are checked against the operator's JWKS; payers sign in with their wallet.
_KEY_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Asymmetric only: a JWKS publishes public keys, and "none" or HS* would let a caller forge.
JWT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class AuthSettings(BaseModel):
    # JSON object: principal name -> sha256 hex of its key (the key itself is never stored).
    api_keys: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["RS256", "ES256"]
    )
    jwks_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    jwks_cache_seconds: float = Field(default=300.0, gt=0, le=86_400)
    leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    # Payers sign in with the paying wallet (x402 sign-in-with-x); only with payments on.
    siwx: bool = True
    siwx_max_age_seconds: int = Field(default=300, ge=10, le=3600)
    # May callers without credentials send messages? Default: yes unless API keys or a
    # JWKS are configured. Anonymous callers never list tasks or read owned ones.
    allow_anonymous: bool | None = None

    @property
    def jwt_enabled(self) -> bool:
        return self.jwks_url is not None

    @property
    def configured(self) -> bool:
        """An account scheme (API keys or JWT) is configured."""
        return bool(self.api_keys) or self.jwt_enabled

    @property
    def anonymous_allowed(self) -> bool:
        return self.allow_anonymous if self.allow_anonymous is not None else not self.configured

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"must be a JSON object of name to sha256 hex ({exc.msg})"
                ) from exc
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object of name to sha256 hex")
        for name, digest in value.items():
            if not _KEY_NAME.match(str(name)):
                raise ValueError(f"name {str(name)[:70]!r} must be 1-64 of A-Z a-z 0-9 . _ @ -")
            if not isinstance(digest, str) or not _SHA256_HEX.match(digest.lower()):
                raise ValueError(f"value for {name} must be the key's sha256 as 64 hex digits")
        return {str(name): digest.lower() for name, digest in value.items()}

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _algorithms_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [a.strip() for a in value.split(",") if a.strip()]
        if isinstance(value, list):
            if not value:
                raise ValueError("must name at least one algorithm")
            unknown = set(value) - JWT_ALGORITHMS
            if unknown:
                raise ValueError(f"{sorted(unknown)} not allowed; use {sorted(JWT_ALGORITHMS)}")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _jwks_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _jwt_complete(self) -> AuthSettings:
        if self.jwks_url is not None:
            if not self.issuer:
                raise ValueError("issuer: required when AUTH__JWKS_URL is set")
            if not self.audience:
                raise ValueError("audience: required when AUTH__JWKS_URL is set")
        elif self.issuer or self.audience:
            raise ValueError("jwks_url: required when AUTH__ISSUER or AUTH__AUDIENCE is set")
        return self


class PushSettings(BaseModel):
    """A2A push notifications: where they may go and how they are signed."""

    # Hosts a client's push URL may name even though they resolve to internal addresses.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # PEM EC P-256 private key signing the notifications' JWTs; generated at start-up if unset.
    signing_key_file: str | None = None
    # One delivery attempt, connect to answer (seconds).
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts_csv(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [h for h in value.split(",") if h.strip()]
        if isinstance(value, list):
            hosts = [
                str(h).strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
                for h in value
            ]
            for host in hosts:
                if not re.fullmatch(r"[a-z0-9.:_-]+", host):
                    raise ValueError(f"{host!r} is not a host name or address")
            return hosts
        return value

    @field_validator("signing_key_file")
    @classmethod
    def _readable_key(cls, value: str | None) -> str | None:
        if value is not None:
            from bindu.signing import load_signing_key

            load_signing_key(value)
        return value


class OutboxSettings(BaseModel):
    """The delivery of push notifications and operator webhooks from the outbox table."""

    # How often a replica looks for due events written elsewhere (seconds).
    poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # A failing destination is retried after this, doubling per failure up to the cap (s).
    first_retry_seconds: float = Field(default=1.0, gt=0)
    max_retry_seconds: float = Field(default=300.0, gt=0)
    # Attempts per event before it is dropped (and counted, and logged).
    max_attempts: int = Field(default=30, ge=1, le=10_000)
    # Deliveries in flight at once per replica.
    concurrency: int = Field(default=16, ge=1, le=1024)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    storage: StorageSettings = Field(default_factory=StorageSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    x402: X402Settings = Field(default_factory=X402Settings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)

    push: PushSettings = Field(default_factory=PushSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    log_level: str = "INFO"


def _variable_name(loc: tuple[int | str, ...], message: str) -> str:
    parts = [str(p) for p in loc if not str(p).isdigit()]
    # Model-level checks report the field inside the message ("field: reason").
    if message.startswith("Value error, ") and ": " in message:
        field, _, _ = message.removeprefix("Value error, ").partition(": ")
        if re.fullmatch(r"[a-z_]+", field):
            parts.append(field)
    if parts and parts[-1] == "schema_name":
        parts[-1] = "schema"
    return "__".join(p.upper() for p in parts) or "settings"


def load_settings(**overrides: Any) -> Settings:
    """Read settings; a bad value raises SettingsError with one line naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"])
        name = _variable_name(tuple(error["loc"]), message)
        reason = message.removeprefix("Value error, ")
        if ": " in reason and reason.split(": ", 1)[0].isidentifier():
            reason = reason.split(": ", 1)[1]
        raise SettingsError(f"{name}: {reason}") from None
