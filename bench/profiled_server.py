"""``bindu serve`` under cProfile (the event loop's thread), for figure 5's profile.

Same settings source and app as ``bindu.cli.serve``. Profiling starts on SIGUSR1; on
SIGTERM uvicorn shuts down gracefully and the profile is written to ``--profile``.

``python -m bench.profiled_server --agent bindu.examples.echo:agent --profile out.prof``
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import signal
from collections.abc import Iterator
from typing import Any

import uvicorn

from bindu.agent import load_agent
from bindu.cli.logging import configure
from bindu.server.app import create_app
from bindu.settings import load_settings


class _Server(uvicorn.Server):
    """Stops on SIGTERM/SIGINT without re-raising the signal afterwards (uvicorn's own
    handling would, and the process would die before the profile is written)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def stop(signum: int, frame: Any) -> None:
            self.should_exit = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--profile", required=True)
    args = parser.parse_args()
    settings = load_settings()
    configure(settings.log_level)
    app = create_app(settings, load_agent(args.agent))
    profile = cProfile.Profile()
    # Profiling starts on SIGUSR1 (after start-up and warm-up), so imports stay out of it.
    signal.signal(signal.SIGUSR1, lambda signum, frame: profile.enable())
    try:
        config = uvicorn.Config(
            app,
            host=settings.server.host,
            port=settings.server.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        _Server(config).run()
    finally:
        profile.disable()
        profile.dump_stats(args.profile)


if __name__ == "__main__":
    main()
