"""What browsers are told and refused: security headers on every response, and state-changing
requests from another origin refused (CSRF), since the dashboard's login is a cookie.

Both are pure ASGI middleware, so that a streamed report passes through them unbuffered and the
last resort's own 500 answer gets the headers too.

Cross-site requests: the check is OWASP's "verifying origin with standard headers". A
browser sends `Origin` on every cross-origin POST (and `Sec-Fetch-Site` everywhere current),
and a page cannot forge either, nor set `Authorization` on a cross-origin request without a
CORS preflight, which this controller never grants. So an unsafe method (POST, PUT, PATCH,
DELETE) is refused when its Origin, or failing that its Sec-Fetch-Site or Referer, says it
came from another site; a request with an `Authorization` header (an API client, an agent)
cannot be cross-site and passes. Which Content-Type it has does not matter: a form post or a
`text/plain` body is refused alike.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

CROSS_SITE_REFUSED = Counter(
    "fleet_cross_site_refused_total",
    "State-changing requests refused because a browser said another site sent them",
)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# Nothing from another host: the dashboard ships its own CSS and script (fleet/web/static).
# Inline style attributes stay allowed (bar widths); inline scripts never are.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "style-src-attr 'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# FastAPI's /docs and /redoc pages load Swagger UI and ReDoc from their CDN with an inline
# start-up script: only those pages get a policy that lets them, and they hold no secrets.
DOCS_PATHS = ("/docs", "/redoc")
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    """ASGI middleware: CSP, X-Frame-Options, nosniff and Referrer-Policy on every HTTP
    response, unless the route set its own value of one."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap `app`, the rest of the ASGI stack, whose HTTP responses get the headers."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on and add each header its response did not set itself; /docs and
        /redoc get their own, looser policy. Other than HTTP (lifespan) passes untouched."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        policy = DOCS_POLICY if path.startswith(DOCS_PATHS) else CONTENT_SECURITY_POLICY
        wanted = ((b"content-security-policy", policy.encode()), *SECURITY_HEADERS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in wanted if name not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _netloc(url: str) -> str | None:
    try:
        return urlsplit(url).netloc
    except ValueError:  # "http://[": no host at all, so none of ours
        return None


def cross_site_reason(scope: Scope) -> str | None:
    """Why this request is refused as cross-site, or None to let it through."""
    if scope.get("method", "GET") in SAFE_METHODS:
        return None
    headers = {name.lower(): value for name, value in scope.get("headers", [])}
    if b"authorization" in headers:
        return None  # no browser sends this cross-site without a preflight we never grant
    host = headers.get(b"host", b"").decode("latin-1").lower()
    # Behind a reverse proxy that rewrites Host, the name the browser used is forwarded (a
    # page cannot set this header on a cross-site request either).
    hosts = {host, headers.get(b"x-forwarded-host", b"").decode("latin-1").lower()} - {""}
    origin = headers.get(b"origin")
    if origin is not None:
        text = origin.decode("latin-1").strip().lower()
        if text == "null":
            return "its Origin is 'null' (a sandboxed or privacy-hidden page)"
        if _netloc(text) not in hosts:
            return f"its Origin {text[:100]!r} is not this controller ({host!r})"
        return None
    site = headers.get(b"sec-fetch-site")
    if site is not None and site.decode("latin-1").lower() not in ("same-origin", "none"):
        return f"the browser says it came from a {site.decode('latin-1')[:20]!r} page"
    referer = headers.get(b"referer")
    if referer is not None:
        netloc = _netloc(referer.decode("latin-1").strip().lower())
        if netloc != "" and netloc not in hosts:
            return "its Referer is another site"
    return None


class CrossSiteRefusal:
    """ASGI middleware: a state-changing request another site's page made is answered 403
    before any route runs (and counted: fleet_cross_site_refused_total)."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap `app`, the rest of the ASGI stack, which a refused request never reaches."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on unless `cross_site_reason` refuses it; then answer 403 with the
        reason as JSON `detail`, log it and count it."""
        reason = cross_site_reason(scope) if scope["type"] == "http" else None
        if reason is None:
            await self.app(scope, receive, send)
            return
        CROSS_SITE_REFUSED.inc()
        log.warning("refused %s %s: %s", scope.get("method"), scope.get("path"), reason)
        body = json.dumps(
            {
                "detail": f"cross-site request refused: {reason}. Use the controller's own "
                "pages, or an API token in an Authorization header"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
