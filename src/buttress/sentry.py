"""Placeholder: Sentry (issue 3) replaces this module."""

from __future__ import annotations

from buttress.config import Settings


def init_sentry(settings: Settings) -> bool:
    return False
