"""Web explorer of a topology cube: Starlette + uvicorn, plotly.js from the plotly package.

``serve(cube, host, port)`` blocks (the ``oncoscale explore`` command); ``start(cube, ...)``
runs the same server on a background thread and returns a handle with ``.url`` and
``.stop()`` (for notebooks, demos and tests).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from oncoscale.errors import CommunicationError, ConfigurationError
from oncoscale.topology.explorer.server import create_app

__all__ = ["ExplorerHandle", "create_app", "serve", "start"]


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port must be an integer in [0, 65535], found {port!r}")
    return port


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve(cube_path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8050,
          log_level: str = "warning") -> None:
    """Serve the explorer of ``cube_path`` on http://host:port/ until interrupted."""
    import uvicorn

    app = create_app(Path(cube_path))
    uvicorn.run(app, host=host, port=_check_port(port), log_level=log_level)


@dataclass
class ExplorerHandle:
    """A running background explorer: ``url``; ``stop()`` shuts it down."""

    url: str
    server: object
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start(cube_path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0,
          log_level: str = "warning", timeout: float = 30.0) -> ExplorerHandle:
    """Start the explorer on a background thread (``port=0``: a free port); returns a handle."""
    import uvicorn

    app = create_app(Path(cube_path))
    port = _check_port(port) or _free_port(host)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="oncoscale-explorer", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise CommunicationError(f"explorer did not start on {host}:{port}")
        time.sleep(0.05)
    return ExplorerHandle(url=f"http://{host}:{port}/", server=server, thread=thread)
