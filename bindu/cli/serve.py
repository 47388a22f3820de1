"""``bindu serve``: the agent server under uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from bindu.agent import load_agent
from bindu.cli.logging import configure
from bindu.server.app import create_app
from bindu.settings import load_settings


def serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = load_settings()
    if overrides:
        settings = settings.model_copy(
            update={"server": settings.server.model_copy(update=overrides)}
        )
    configure(settings.log_level)
    agent = load_agent(args.agent)
    app = create_app(settings, agent)
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # Client addresses come from the socket; X402__RATE_LIMIT__TRUSTED_PROXIES decides
        # whose X-Forwarded-For is believed (bindu/server/client_address.py).
        proxy_headers=False,
    )
    return 0
