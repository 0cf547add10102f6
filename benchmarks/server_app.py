"""The app uvicorn serves in the network benchmark, chosen by ``BENCH_APP``.

``bare`` (Starlette), ``buttress`` (the whole ``wrap()`` stack, Sentry with a dropping
transport), ``peer`` (the peer stack, sentry-sdk's default integrations), and
``bare-fastapi`` / ``buttress-fastapi``, the same service in FastAPI. ``buttress run``
serves ``bare`` and wraps it itself (the workers part of the benchmark).

    BENCH_APP=buttress uvicorn server_app:app --app-dir benchmarks
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import apps


def build(kind: str) -> Any:
    if kind == "bare":
        return apps.starlette_app()
    if kind == "bare-fastapi":
        return apps.fastapi_app()
    if kind in ("buttress", "buttress-fastapi"):
        os.environ["SENTRY_DSN"] = apps.DSN  # so wrap() itself starts Sentry, as deployed
        settings = apps.buttress_settings()
        apps.configure_buttress_logging(settings)
        served = apps.fastapi_app() if kind == "buttress-fastapi" else apps.starlette_app()
        app = apps.buttress_stack(served, settings)
        apps.init_buttress_sentry(settings)
        return app
    if kind == "peer":
        logging.basicConfig(stream=apps.devnull(), level=logging.INFO)
        apps.init_peer_sentry()
        return apps.starlette_app(peer=True)
    raise SystemExit(
        f"BENCH_APP={kind!r}: expected bare, buttress, peer, bare-fastapi or buttress-fastapi"
    )


app = build(os.environ.get("BENCH_APP", "bare"))
