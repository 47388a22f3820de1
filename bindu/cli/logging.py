"""Loguru set-up shared by the commands."""

from __future__ import annotations

import sys

from loguru import logger


def configure(level: str) -> None:
    logger.remove()
    logger.add(
        sys.stderr,
        level=level.upper(),
        format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}",
        backtrace=False,
        diagnose=False,  # never print local variables: they may hold signed payloads
    )
