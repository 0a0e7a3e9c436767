"""A real MCP client nobody on this project wrote: the official Python SDK.

usage: python_client.py URL TOKEN TOOL ARGS_JSON [MODE]
Lists tools and calls TOOL through Bastion over Streamable HTTP with a bearer
token, then prints one JSON line: {"protocol": "...", "tools": [...], "result": {...}}.

MODE is the SDK client's own negotiation setting: "legacy" (the initialize
handshake and a session, 2025-era), a modern revision such as "2026-07-28"
(adopted directly: every request carries its own envelope), or "auto" (the
SDK's default: probe with server/discover, fall back to initialize).
"""
import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def main(url: str, token: str, tool: str, args: dict, mode: str) -> None:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode) as client:
            tools = await client.list_tools()
            result = await client.call_tool(tool, args)
            print(json.dumps({
                "protocol": client.protocol_version,
                "tools": [t.name for t in tools.tools],
                "result": result.model_dump(mode="json", by_alias=True, exclude_none=True),
            }))


if __name__ == "__main__":
    mode = sys.argv[5] if len(sys.argv) > 5 else "auto"
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), mode))
