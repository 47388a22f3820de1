"""``bindu serve``: the agent server under uvicorn."""

from __future__ import annotations

import argparse

from bindu.agent import load_agent
from bindu.cli.logging import configure
from bindu.server.app import create_app
from bindu.server.shutdown import run_server
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
    # SIGTERM drains the task queue before uvicorn stops (bindu.server.shutdown).
    run_server(
        app,
        settings.server.host,
        settings.server.port,
        lambda: getattr(app.state, "manager", None),
    )
    return 0
