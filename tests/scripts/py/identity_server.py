"""A PyPI `mcp` (2.x) MCPServer that shows what identity reached it, for mcp-guard's identity suites.

Usage: python identity_server.py --port PORT --log FILE

Streamable HTTP on 127.0.0.1:PORT/mcp (JSON answers). Every HTTP request's headers are appended to
FILE as one JSON line ({"method", "path", "headers"}), before the MCP layer sees it, so a test can
prove that no request ever carried the client's token. Tools:
  whoami()     -> the request headers of this call, as a JSON object (lower-case names)
  echo(text)   -> text
Prints "READY <port>" on stdout once the server listens.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time

import uvicorn
from mcp.server.mcpserver import Context, MCPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", required=True)
    args = ap.parse_args()

    server = MCPServer("mcp-guard-identity-server", version="1.0.0", log_level="WARNING")

    @server.tool()
    def whoami(ctx: Context) -> str:
        """Returns the request headers this call arrived with."""
        headers = ctx.headers or {}
        return json.dumps({k.lower(): v for k, v in headers.items()}, sort_keys=True)

    @server.tool()
    def echo(text: str) -> str:
        """Echoes the text back."""
        return text

    app = server.streamable_http_app(json_response=True)
    lock = threading.Lock()

    async def logging_app(scope, receive, send):
        if scope["type"] == "http":
            headers = {}
            for k, v in scope.get("headers", []):
                name = k.decode("latin-1").lower()
                value = v.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            line = json.dumps(
                {"method": scope.get("method"), "path": scope.get("path"), "headers": headers}
            )
            with lock, open(args.log, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        await app(scope, receive, send)

    def announce() -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", args.port), timeout=0.5):
                    print(f"READY {args.port}", flush=True)
                    return
            except OSError:
                time.sleep(0.05)

    threading.Thread(target=announce, daemon=True).start()
    uvicorn.run(logging_app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
