"""A PyPI `mcp` (2.x) MCPServer for mcp-guard's end-to-end suites.

Usage: python server.py --port PORT [--json-response | --sse-response | --legacy-sse]
                        [--stateless] [--marker-dir DIR] [--public-cache]
                        [--echo-description TEXT] [--header-params]

Streamable HTTP on 127.0.0.1:PORT/mcp (JSON or SSE answers), or with --legacy-sse the older
HTTP+SSE transport (GET /sse, POST /messages/?session_id=..). Tools:
  echo(text)            -> text
  add(a, b)             -> a + b
  secret_tool(note)     -> "secret:<note>"; also creates DIR/secret_tool.ran, so a test can
                           prove whether a call reached the server
  slow_count(steps, interval_ms) -> sends one progress notification every interval_ms
  grüßen(name)          -> "Grüß dich, <name>": a non-ASCII tool name, which 2026-07-28 clients
                           send base64-wrapped in the Mcp-Name header (=?base64?...?=)
Resources: note://café (non-ASCII URI, same header encoding), note://plain.

--echo-description TEXT: echo's description (a changed definition under the same name, as a
server that turns a tool against its users would list it).
--header-params: one more tool, deploy(region, replicas, note), whose region and replicas the
input schema mirrors into Mcp-Param-Region / Mcp-Param-Replicas headers (x-mcp-header, MCP
2026-07-28); each run prints DEPLOY_RAN <region> to stderr.

--public-cache: list results carry the MCP 2026-07-28 caching hints `cacheScope: "public"`,
`ttlMs: 60000` (the same for every caller, as far as this server knows).

Prints "READY <port>" on stdout once the server listens (uvicorn's own log goes to stderr).
The server keeps its default DNS-rebinding protection: a foreign Host gets 421.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time

from typing import Annotated

from mcp.server.caching import CacheHint
from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--json-response", action="store_true")
    mode.add_argument("--sse-response", action="store_true")
    mode.add_argument("--legacy-sse", action="store_true")
    ap.add_argument("--stateless", action="store_true")
    ap.add_argument("--marker-dir", default=None)
    ap.add_argument("--public-cache", action="store_true")
    ap.add_argument("--echo-description", default="Echoes the text back.")
    ap.add_argument("--header-params", action="store_true")
    args = ap.parse_args()

    hints = {}
    if args.public_cache:
        public = CacheHint(ttl_ms=60000, scope="public")
        hints = {m: public for m in ("tools/list", "prompts/list", "resources/list", "resources/templates/list")}
    server = MCPServer(
        "mcp-guard-py-test-server", version="1.0.0", log_level="WARNING", cache_hints=hints or None
    )

    @server.tool(description=args.echo_description)
    def echo(text: str) -> str:
        return text

    if args.header_params:

        @server.tool()
        def deploy(
            region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})],
            replicas: Annotated[int, Field(json_schema_extra={"x-mcp-header": "Replicas"})] = 1,
            note: str = "",
        ) -> str:
            """Deploys to a region (its arguments are mirrored into headers)."""
            print(f"DEPLOY_RAN {region}", file=sys.stderr, flush=True)
            return f"deployed {replicas} to {region}"

    @server.tool()
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @server.tool()
    def secret_tool(note: str = "") -> str:
        """A tool the suites deny: it must never run behind the sidecar."""
        if args.marker_dir:
            path = os.path.join(args.marker_dir, "secret_tool.ran")
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{time.time()} {note}\n")
        print(f"SECRET_TOOL_RAN {note}", file=sys.stderr, flush=True)
        return f"secret:{note}"

    @server.tool()
    async def slow_count(ctx: Context, steps: int = 5, interval_ms: int = 200) -> str:
        """Reports progress once per interval, then returns."""
        for i in range(1, steps + 1):
            await asyncio.sleep(interval_ms / 1000.0)
            await ctx.report_progress(i, steps, f"step {i}")
        return f"counted {steps}"

    @server.tool(name="grüßen")
    def gruessen(name: str) -> str:
        """Greets, under a non-ASCII tool name."""
        return f"Grüß dich, {name}"

    @server.resource("note://café")
    def cafe_note() -> str:
        """A resource with a non-ASCII URI."""
        return "un café"

    @server.resource("note://plain")
    def plain_note() -> str:
        """A resource with a plain URI."""
        return "plain"

    # Announce readiness once the port accepts connections.
    def announce() -> None:
        import socket

        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", args.port), timeout=0.5):
                    print(f"READY {args.port}", flush=True)
                    return
            except OSError:
                time.sleep(0.05)

    threading.Thread(target=announce, daemon=True).start()

    if args.legacy_sse:
        server.run("sse", host="127.0.0.1", port=args.port)
        return
    server.run(
        "streamable-http",
        host="127.0.0.1",
        port=args.port,
        json_response=not args.sse_response,
        stateless_http=args.stateless,
    )


if __name__ == "__main__":
    main()
