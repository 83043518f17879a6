"""Demo MCP servers shipped with mcpx: a document store and a CRM over one fictional, seeded business.

`python -m controller.demo.docstore` and `python -m controller.demo.crm` serve them over stdio (add
`--transport streamable-http --port N` for HTTP). Everything is generated in memory at start from a fixed seed, so
two starts serve byte-identical data: the workload of the token benchmark and of `make run` out of the box.

Modules: `world` (the companies, people and deals both servers share), `transcripts` (meeting transcripts),
`documents` (reports and spreadsheets, the docstore's corpus), `docstore`, `crm` and `deploys` (the servers).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mcp.server import MCPServer


def parse_args(prog: str, description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line every demo server takes: a transport, and where to listen for HTTP."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP only (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP only; the endpoint is /mcp (default: %(default)s)")
    return parser.parse_args(argv)


def serve(server: MCPServer, args: argparse.Namespace) -> None:
    """Serve on stdio or streamable HTTP until the client or a signal ends it."""
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=args.host, port=args.port)
