"""`mcp-gateway serve`: run the gateway."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from gateway.config.dirs import private_dir
from gateway.config.files import load_gateway_config


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import build_gateway, create_app
    from gateway.http.limits import server_options
    from gateway.logs import configure

    configure(args.log_level)
    config = load_gateway_config(Path(args.config))
    private_dir(config.state_dir)
    fast = importlib.util.find_spec("uvloop") is not None and importlib.util.find_spec("httptools") is not None
    uvicorn.run(
        lambda: create_app(build_gateway(config, config_path=Path(args.config))),  # built inside the server's loop
        factory=True,
        host=config.listen.host,
        port=config.listen.port,
        log_config=None,
        access_log=False,
        loop="uvloop" if fast else "asyncio",
        timeout_graceful_shutdown=5,
        **server_options(config.http, fast=fast),  # the HTTP protocol (h11 or httptools), with its bounds
    )
    return 0
