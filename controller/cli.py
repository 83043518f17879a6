"""The `mcpx` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from controller.api import create_app
from controller.config import Settings
from controller.errors import ConfigError


def serve(args: argparse.Namespace) -> int:
    given = (("host", args.host), ("port", args.port), ("servers_file", args.config))
    settings = Settings(**{key: value for key, value in given if value is not None})
    try:
        app = create_app(settings)
    except ConfigError as exc:
        print(f"mcpx: {exc}", file=sys.stderr)
        return 2
    print(f"mcpx: serving on http://{settings.host}:{settings.port}", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, timeout_graceful_shutdown=30)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mcpx", description="Run AI-agent code next to MCP tools, in sandboxes.")
    commands = root.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the HTTP API")
    serve_parser.add_argument("--host", help="address to bind (default: MCPX_HOST or 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, help="port to bind (default: MCPX_PORT or 8080)")
    serve_parser.add_argument("--config", type=Path, help="mcpServers JSON file (default: the built-in demo servers)")
    serve_parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve_parser.set_defaults(handler=serve)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
