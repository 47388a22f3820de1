"""Build Settings the way a server does: from environment variables."""

from __future__ import annotations

import os
from unittest import mock

from bindu.settings import Settings, load_settings


def settings_from_env(env: dict[str, str]) -> Settings:
    """load_settings() seeing only ``env`` for bindu's variables (no .env, no leaks)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            (
                "X402__",
                "STORAGE__",
                "SERVER__",
                "METRICS__",
                "AUTH__",
                "PUSH__",
                "OUTBOX__",
                "LOG_LEVEL",
            )
        )
    }
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        return load_settings(_env_file=None)
