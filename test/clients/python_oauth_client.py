"""The official Python MCP SDK's own OAuth client (mcp.client.auth), unmodified.

usage: python_oauth_client.py URL REDIRECT_URI TOOL ARGS_JSON WAIT_SECONDS
Connects with no token: the SDK discovers the authorization server from the
401, registers (DCR), and asks for a browser. This script prints
{"authorize": URL} and reads the callback URL the browser reached from stdin
(the test drives the browser). Then it lists tools, calls TOOL, waits
WAIT_SECONDS (past the access token's lifetime), calls TOOL again (the SDK
refreshes) and prints one JSON line: {"tools", "first", "second", "tokens"}.
"""
import asyncio
import json
import sys
from urllib.parse import parse_qs, urlparse

from mcp import Client
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None
        self.issued: list[str] = []

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens
        self.issued.append(tokens.access_token)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def main(url: str, redirect_uri: str, tool: str, args: dict, wait: float) -> None:
    storage = MemoryStorage()

    async def redirect_handler(authorization_url: str) -> None:
        print(json.dumps({"authorize": authorization_url}), flush=True)

    async def callback_handler() -> AuthorizationCodeResult:
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        query = parse_qs(urlparse(line.strip()).query)
        return AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0], iss=query.get("iss", [None])[0])

    auth = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="python-sdk-agent",
            redirect_uris=[redirect_uri],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    http = create_mcp_http_client(auth=auth)
    async with http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            tools = await client.list_tools()
            first = await client.call_tool(tool, args)
            await asyncio.sleep(wait)
            second = await client.call_tool(tool, args)
            print(json.dumps({
                "tools": [t.name for t in tools.tools],
                "first": first.model_dump(mode="json", by_alias=True, exclude_none=True),
                "second": second.model_dump(mode="json", by_alias=True, exclude_none=True),
                "tokens": storage.issued,
            }), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), float(sys.argv[5])))
