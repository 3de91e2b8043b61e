"""``callgate serve``."""

from __future__ import annotations

import asyncio
import logging
import sys

from callgate.cli.common import DEFAULT_CONFIG, ConfigOption, fail
from callgate.errors import CallgateError


def serve(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run every listener. SIGTERM drains sessions; SIGHUP reloads the config for new sessions."""
    from callgate.server import serve as run_server

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    try:
        asyncio.run(run_server(config))
    except CallgateError as exc:
        fail(exc.message)
