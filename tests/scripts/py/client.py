"""Drives the PyPI `mcp` (2.x) client against a Streamable HTTP URL and prints one JSON document.

Usage: python client.py --url URL [--transport http|sse] [--mode auto|legacy|2026-07-28] --ops JSON

--transport sse uses the older HTTP+SSE transport (GET URL, then POST to the announced endpoint);
use it with --mode legacy.

JSON is a list of operations, run in order on one connection:
  {"op": "list"}                                   -> {"ok": true, "tools": [names...]}
  {"op": "call", "name": N, "args": {...}}         -> {"ok": true, "is_error": b, "text": "...",
                                                       "structured": {...}}
  {"op": "read", "uri": U}                         -> {"ok": true, "text": "..."}
  {"op": "progress", "name": N, "args": {...}}     -> as "call", plus "progress": [{"progress": p,
                                                       "t": seconds since the call started}, ...]
A failing operation gives {"ok": false, "error": {"type": ..., "code": ..., "message": ...}} and
the next one still runs. Output: {"protocol_version": ..., "server": ..., "results": [...]}.
A failure to connect at all gives {"connect_error": {...}} and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anyio
from mcp import Client
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPError


def err(e: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(e).__name__, "message": str(e)}
    if isinstance(e, MCPError):
        out["code"] = e.error.code
        out["message"] = e.error.message
    if isinstance(e, BaseExceptionGroup):
        out["inner"] = [err(x) for x in e.exceptions]
    return out


def call_result(r: Any) -> dict[str, Any]:
    text = "".join(getattr(c, "text", "") for c in (r.content or []))
    return {"ok": True, "is_error": bool(r.is_error), "text": text, "structured": r.structured_content}


async def run(url: str, transport: str, mode: str, ops: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    with anyio.fail_after(timeout * 2):
        return await _run(url, transport, mode, ops, timeout, results)


async def _run(
    url: str,
    transport: str,
    mode: str,
    ops: list[dict[str, Any]],
    timeout: float,
    results: list[dict[str, Any]],
) -> dict[str, Any]:
    server: Any = url
    if transport == "sse":
        server = sse_client(url, timeout=timeout)
    async with Client(server, mode=mode, read_timeout_seconds=timeout, cache=None) as client:
        for op in ops:
            kind = op.get("op")
            try:
                if kind == "list":
                    r = await client.list_tools()
                    results.append({"ok": True, "tools": [t.name for t in r.tools]})
                elif kind == "call":
                    r = await client.call_tool(op["name"], op.get("args") or {})
                    results.append(call_result(r))
                elif kind == "read":
                    r = await client.read_resource(op["uri"])
                    text = "".join(getattr(c, "text", "") for c in r.contents)
                    results.append({"ok": True, "text": text})
                elif kind == "progress":
                    start = time.monotonic()
                    seen: list[dict[str, Any]] = []

                    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                        seen.append({"progress": progress, "t": time.monotonic() - start})

                    r = await client.call_tool(op["name"], op.get("args") or {}, progress_callback=on_progress)
                    out = call_result(r)
                    out["progress"] = seen
                    out["elapsed"] = time.monotonic() - start
                    results.append(out)
                else:
                    results.append({"ok": False, "error": {"type": "usage", "message": f"unknown op {kind!r}"}})
            except Exception as e:  # noqa: BLE001 - reported to the Rust test as data
                results.append({"ok": False, "error": err(e)})
        server = client.server_info
        return {
            "protocol_version": client.protocol_version,
            "server": server.name if server else None,
            "results": results,
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--transport", choices=["http", "sse"], default="http")
    ap.add_argument("--ops", required=True)
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()
    ops = json.loads(args.ops)
    try:
        out = anyio.run(run, args.url, args.transport, args.mode, ops, args.timeout)
    except BaseException as e:  # noqa: BLE001
        print(json.dumps({"connect_error": err(e)}))
        sys.exit(2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
