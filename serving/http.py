"""HTTP plumbing of the ingress: request ids, auth, content type and payload limit, timing, error mapping.

Every failure leaves as `{"error": {"kind", "message", "request_id"}}` with a 4xx status when the
request was at fault (never a 500), a 503 with Retry-After when the endpoint cannot answer now,
and is counted by kind in the metrics. Client errors are logged as one line, never a traceback.
The checks that need no body (token, content type, size) run before the body is read or parsed,
so an unauthenticated request is a 401 whatever its body. A body must arrive within its own
deadline (408 past it).

Admission decides when a request arrives, before its body is read: behind Serve's proxy, reading
a body is a call back to the proxy, which under overload took a median 0.48 s, and deciding only
once the body was there made almost every refusal wait for it (docs/benchmarks/refusals.md). So a
ranking request takes its slot of `max_in_flight` on arrival, and one that finds none is refused at
once. A body still arriving `admission_body_grace_s` after its request gives the slot back (slow
clients hold none past that) and takes one again, or is refused, once it has arrived.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.datastructures import State
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import metrics
from serving.errors import (
    BodyTimeoutError,
    OverloadedError,
    PayloadTooLargeError,
    ServingError,
    UnauthorizedError,
    UnavailableError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger("ray.serve")

# Route label values for the latency histogram; anything else is "other" (bounded cardinality).
KNOWN_ROUTES = ("/v1/recommend", "/v1/score", "/v1/tasks", "/v1/model", "/healthz", "/readyz", "/metrics")
# Routes that take a JSON body (with POST; another method gets the router's 405).
JSON_ROUTES = ("/v1/recommend", "/v1/score")


def request_id_of(request: Request) -> str:
    """The id Serve assigned to this request (it echoes the client's X-Request-ID when sent and
    tags the replica's log lines with it); a fresh one outside Serve."""
    return request.scope.get("grec.request_id") or ""


def _serve_request_id() -> str | None:
    try:
        from ray.serve.context import _get_serve_request_context
    except ImportError:
        return None
    return _get_serve_request_context().request_id or None


def error_body(kind: str, message: str, request_id: str) -> dict[str, Any]:
    return {"error": {"kind": kind, "message": message, "request_id": request_id}}


def _log_error(request_id: str, status_code: int, kind: str, message: str) -> None:
    metrics.count_error(kind)
    if status_code >= 500:
        log.warning("request %s failed: %s: %s", request_id, kind, message)
    else:
        log.info("request %s rejected: %s: %s", request_id, kind, message)


def _token_error(headers: dict[str, str], expected: str | None) -> UnauthorizedError | None:
    if expected is None:
        return None
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return UnauthorizedError("missing or wrong bearer token: send 'Authorization: Bearer <token>'")
    return None


def _content_type_error(path: str, method: str, headers: dict[str, str]) -> UnsupportedMediaTypeError | None:
    if method != "POST" or path not in JSON_ROUTES:
        return None
    content_type = headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        return UnsupportedMediaTypeError(
            f"the body must be JSON: send 'Content-Type: application/json' (got {content_type or 'none'!r})")
    return None


class RequestEnvelope:
    """Pure ASGI middleware: records the request id; for /v1 routes checks the bearer token
    (`app.state.api_token`) and the content type before anything reads the body; admits at most
    `app.state.max_in_flight` ranking requests at once (503 with Retry-After beyond), deciding on
    arrival; reads the body within `app.state.body_timeout_s` (408 past it) and at most
    `app.state.max_body_bytes` of it (413 beyond), a ranking request's slot held while it arrives
    for `app.state.admission_body_grace_s` at most; times the request and turns any unexpected
    exception into a JSON 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = _serve_request_id() or headers.get("x-request-id") or uuid.uuid4().hex
        scope["grec.request_id"] = request_id
        path = _route_path(scope)
        route = path if path in KNOWN_ROUTES else "other"
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        # Serve's proxy returns the id in the X-Request-ID response header itself.
        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        async def refuse(error: ServingError, extra_headers: dict[str, str] | None = None) -> None:
            _log_error(request_id, error.status_code, error.kind, error.message)
            await _reply(send_tracked, error.status_code, error_body(error.kind, error.message, request_id),
                         extra_headers)

        admitted = False
        try:
            state = scope["app"].state
            if path.startswith("/v1/"):
                if error := _token_error(headers, state.api_token):
                    await refuse(error, {"WWW-Authenticate": "Bearer"})
                    return
                if error := _content_type_error(path, scope["method"], headers):
                    await refuse(error)
                    return
            ranking = path in JSON_ROUTES

            async def refuse_at_capacity() -> None:
                await refuse(OverloadedError(f"the endpoint is at capacity; retry in {state.retry_after_s} s"),
                             {"Retry-After": str(state.retry_after_s)})

            if ranking:
                if state.in_flight >= state.max_in_flight:
                    await refuse_at_capacity()
                    return
                state.in_flight += 1
                admitted = True

            def give_back_slot() -> None:  # its body is slow: it holds no slot while it keeps coming
                nonlocal admitted
                state.in_flight -= 1
                admitted = False

            try:
                body = await _read_body(headers, receive, state, give_back_slot if admitted else None)
            except TimeoutError:
                await refuse(BodyTimeoutError(f"the request body did not arrive within {state.body_timeout_s} s"),
                             {"Connection": "close"})
                return
            if body is None:
                await refuse(PayloadTooLargeError(
                    f"request body is larger than the limit of {state.max_body_bytes} bytes"))
                return
            if ranking and not admitted:  # a slow body, here at last: a slot again, or a refusal
                if state.in_flight >= state.max_in_flight:
                    await refuse_at_capacity()
                    return
                state.in_flight += 1
                admitted = True
            await self.app(scope, _replay(body, receive), send_tracked)
        except Exception:
            log.exception("request %s failed with an unexpected error", request_id)
            metrics.count_error("internal")
            if not status["sent"]:
                await _reply(send_tracked, 500, error_body("internal", "internal server error", request_id))
        finally:
            if admitted:
                scope["app"].state.in_flight -= 1
            metrics.observe_request(route, status["code"], time.perf_counter() - started)


def _route_path(scope: Scope) -> str:
    """The path within the application (without the route prefix Serve mounted it under)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def _read_body(headers: dict[str, str], receive: Receive, state: State,
                     on_grace_passed: Callable[[], None] | None) -> bytes | None:
    """The whole body, or None past `state.max_body_bytes`; TimeoutError past `state.body_timeout_s`.
    `on_grace_passed` is called once when the body is still arriving `state.admission_body_grace_s`
    after the start."""
    reading = asyncio.ensure_future(
        asyncio.wait_for(_read_limited_body(headers, receive, state.max_body_bytes), state.body_timeout_s))
    try:
        if on_grace_passed is not None:
            done, _ = await asyncio.wait({reading}, timeout=state.admission_body_grace_s)
            if not done:
                on_grace_passed()
        return await reading
    finally:
        reading.cancel()  # when this request is cancelled (the client left) while the body arrives


async def _read_limited_body(headers: dict[str, str], receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed `limit` bytes."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _reply(send: Send, status_code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status_code, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that yields the already-read body once, then the client's own messages
    (a disconnect, when it comes)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _json_error(request: Request, status_code: int, kind: str, message: str,
                headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = request_id_of(request)
    _log_error(request_id, status_code, kind, message)
    if status_code == 503:
        headers = {**(headers or {}), "Retry-After": str(request.app.state.retry_after_s)}
    return JSONResponse(error_body(kind, message, request_id), status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        # Replica errors arrive as RayTaskError subclasses of the original: same kind and message.
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, UnauthorizedError) else None
        return _json_error(request, exc.status_code, exc.kind, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return _json_error(request, 400, "malformed_json", "the request body is not valid JSON")
        described = "; ".join(
            f"{'.'.join(str(part) for part in p.get('loc', ()) if part != 'body') or 'body'}: {p.get('msg')}"
            for p in problems
        )
        return _json_error(request, 422, "invalid_request", described)

    # Both are mapped where the calls are made (serving.health); these catch any call made elsewhere.
    @app.exception_handler(BackPressureError)
    async def overloaded(request: Request, exc: BackPressureError) -> JSONResponse:
        error = OverloadedError("the endpoint is at capacity; retry later")
        return _json_error(request, error.status_code, error.kind, error.message)

    @app.exception_handler(RayActorError)
    async def replica_died(request: Request, exc: RayActorError) -> JSONResponse:
        error = UnavailableError("a replica died while answering; retry later")
        return _json_error(request, error.status_code, error.kind, error.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return _json_error(request, exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail),
                           dict(exc.headers or {}))
