#!/usr/bin/env python3
"""Reference MCP client (official Python SDK `mcp` 2.x) used by Portcullis integration tests.

Usage:
  mcp_client.py URL [--token TOKEN | --oauth-login EMAIL:PASSWORD [--client-metadata-url URL]]
                [--mode legacy|auto]
                [--transport streamable-http|sse] [--timeout SECS]
                [--call TOOL --args JSON]... [--list-resources] [--list-prompts]

--oauth-login runs the SDK's own OAuth client (discovery from the 401, dynamic registration,
authorization code + PKCE, token) and plays the person in the browser: it signs in to the
gateway's console with EMAIL and PASSWORD and allows access on the consent page. With
--client-metadata-url the client identifies by that URL (a Client ID Metadata Document)
instead of registering.

Prints one JSON object on stdout and exits 0; on any failure prints the error to
stderr (JSON-RPC errors as "MCP error CODE: MESSAGE") and exits 1.
"""

import argparse
import json
import logging
import sys

import html
import re
from urllib.parse import parse_qs, urljoin, urlparse

import anyio
import httpx2
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


class Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors are failures too: exit 1, not argparse's 2
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


class CallAction(argparse.Action):
    """--call starts a new call; the next --args attaches to it (so --args is optional, default {})."""

    def __call__(self, parser, ns, value, option):
        if option == "--call":
            ns.calls.append([value, None])
            return
        if not ns.calls or ns.calls[-1][1] is not None:
            parser.error("--args must follow its own --call")
        try:
            ns.calls[-1][1] = json.loads(value)
        except json.JSONDecodeError as e:
            parser.error(f"--args for {ns.calls[-1][0]!r} is not JSON: {e}")


def parse_args() -> argparse.Namespace:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--token", help="sent as 'Authorization: Bearer TOKEN'")
    p.add_argument("--oauth-login", metavar="EMAIL:PASSWORD", help="get a token with the OAuth flow, signing in as EMAIL")
    p.add_argument("--client-metadata-url", help="with --oauth-login: identify by this metadata document URL")
    # auto = probe 2026-07-28 `server/discover`, fall back to `initialize`; legacy = `initialize` only.
    p.add_argument("--mode", choices=["legacy", "auto"], default="auto")
    # streamable-http = POST/GET/DELETE on one URL; sse = the legacy 2024-11-05 HTTP+SSE transport.
    p.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    # Bounds every request so a hung gateway fails the test instead of stalling it.
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--call", dest="calls", action=CallAction, default=[], metavar="TOOL")
    p.add_argument("--args", dest="calls", action=CallAction, metavar="JSON", help="arguments of the preceding --call")
    p.add_argument("--list-resources", action="store_true")
    p.add_argument("--list-prompts", action="store_true")
    return p.parse_args()


def text_of(result) -> str:
    # Only text blocks matter to the tests; images/resources are skipped.
    return "".join(c.text for c in result.content if getattr(c, "type", None) == "text")


async def list_all(fetch, field: str) -> list:
    # Follow nextCursor so a gateway that paginates merged listings is still seen whole.
    items, cursor = [], None
    for _ in range(100):
        page = await fetch(cursor=cursor)
        items += getattr(page, field)
        cursor = page.next_cursor
        if cursor is None:
            break
    return items


class MemoryStorage:
    """Tokens and the registered client, kept for this run only."""

    def __init__(self):
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info):
        self.client = client_info


def hidden_fields(page: str, form_marker: str) -> dict:
    """The hidden inputs of the form containing `form_marker`."""
    form = next(part for part in page.split("</form>") if form_marker in part)
    return {html.unescape(n): html.unescape(v) for n, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form)}


def browser_login(email: str, password: str):
    """The person's part of the flow, as a browser without JavaScript does it: returns the
    redirect handler (given the authorization URL) and the callback handler (the code)."""
    result: dict = {}

    async def redirect_handler(authorization_url: str) -> None:
        async with httpx2.AsyncClient(follow_redirects=False, timeout=20.0) as browser:
            page = await browser.get(authorization_url)
            if page.status_code == 303:  # not signed in: the console's sign-in page
                login_url = urljoin(authorization_url, page.headers["location"])
                login = await browser.get(login_url)
                fields = hidden_fields(login.text, 'name="csrf"')
                fields.update(email=email, password=password)
                signed_in = await browser.post(urljoin(login_url, "/login"), data=fields)
                if signed_in.status_code != 303:
                    raise RuntimeError(f"sign-in failed with HTTP {signed_in.status_code}")
                page = await browser.get(urljoin(login_url, signed_in.headers["location"]))
            if page.status_code != 200:
                raise RuntimeError(f"the authorization page answered HTTP {page.status_code}: {page.text[:300]}")
            fields = hidden_fields(page.text, 'value="approve"')
            approved = await browser.post(urljoin(authorization_url, "/oauth/authorize"), data=fields)
            location = approved.headers.get("location", "")
            query = parse_qs(urlparse(location).query)
            if "code" not in query:
                raise RuntimeError(f"no code in the redirect: {location}")
            result.update(code=query["code"][0], state=query.get("state", [None])[0], iss=query.get("iss", [None])[0])

    async def callback_handler() -> AuthorizationCodeResult:
        return AuthorizationCodeResult(code=result["code"], state=result["state"], iss=result["iss"])

    return redirect_handler, callback_handler


async def run(a: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {a.token}"} if a.token else None
    auth = None
    if a.oauth_login:
        email, password = a.oauth_login.split(":", 1)
        redirect_handler, callback_handler = browser_login(email, password)
        auth = OAuthClientProvider(
            server_url=a.url,
            client_metadata=OAuthClientMetadata(
                client_name="portcullis-tests (python sdk)",
                redirect_uris=["http://127.0.0.1:9/callback"],
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                token_endpoint_auth_method="none",
            ),
            storage=MemoryStorage(),
            redirect_handler=redirect_handler,
            callback_handler=callback_handler,
            client_metadata_url=a.client_metadata_url,
        )
    # Short connect timeout so a closed port fails fast; read timeout bounds a stuck stream.
    timeout = httpx2.Timeout(a.timeout, connect=5.0)
    # Our own httpx2 client is the only way to add headers; the SDK won't close it for us.
    async with create_mcp_http_client(headers=headers, timeout=timeout, auth=auth) as http:
        if a.transport == "sse":
            transport = sse_client(a.url, headers=headers, timeout=a.timeout)
        else:
            transport = streamable_http_client(a.url, http_client=http)
        # cache=None: every list must really reach the gateway, not a client-side cache.
        async with Client(transport, mode=a.mode, read_timeout_seconds=a.timeout, cache=None) as client:
            out: dict = {
                "protocol": client.protocol_version,
                # 2026-era servers may omit serverInfo, so None is possible in auto mode.
                "server": client.server_info.name if client.server_info else None,
                "tools": [t.name for t in await list_all(client.list_tools, "tools")],
                "calls": [],
            }
            for tool, arguments in a.calls:
                r = await client.call_tool(tool, arguments if arguments is not None else {})
                out["calls"].append({"tool": tool, "is_error": bool(r.is_error), "text": text_of(r)})
            if a.list_resources:
                out["resources"] = [str(r.uri) for r in await list_all(client.list_resources, "resources")]
            if a.list_prompts:
                out["prompts"] = [p.name for p in await list_all(client.list_prompts, "prompts")]
            return out


def leaves(exc: BaseException):
    # anyio task groups wrap transport failures in (nested) ExceptionGroups.
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            yield from leaves(e)
    else:
        yield exc


def main() -> int:
    a = parse_args()
    # The SDK logs transport tracebacks at ERROR; keep stderr to our one-line diagnosis.
    logging.basicConfig(level=logging.CRITICAL)
    try:
        out = anyio.run(run, a)
    except BaseException as exc:  # noqa: BLE001 - any failure must become exit 1
        if isinstance(exc, KeyboardInterrupt):
            raise
        errs = list(leaves(exc))
        mcp_err = next((e for e in errs if isinstance(e, MCPError)), None)
        if mcp_err is not None:
            print(f"MCP error {mcp_err.code}: {mcp_err.message}", file=sys.stderr)
        else:
            print("; ".join(f"{type(e).__name__}: {e}".rstrip(": ") for e in errs), file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
