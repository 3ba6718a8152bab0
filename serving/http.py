"""HTTP plumbing of the ingress: request ids, payload limit, timing, auth and error mapping.

Every failure leaves as `{"error": {"kind", "message", "request_id"}}` with a 4xx status when the
request was at fault (never a 500) and is counted by kind in the metrics.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import metrics
from serving.errors import PayloadTooLargeError, ServingError, UnauthorizedError

log = logging.getLogger("ray.serve")

# Route label values for the latency histogram; anything else is "other" (bounded cardinality).
KNOWN_ROUTES = ("/v1/recommend", "/v1/score", "/v1/tasks", "/v1/model", "/healthz", "/readyz", "/metrics")


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


class RequestEnvelope:
    """Pure ASGI middleware: records the request id, rejects bodies over the limit
    (`app.state.max_body_bytes`) before anything parses them, times the request and turns any
    unexpected exception into a JSON 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        request_id = _serve_request_id() or headers.get("x-request-id") or uuid.uuid4().hex
        scope["grec.request_id"] = request_id
        route = scope["path"] if scope["path"] in KNOWN_ROUTES else "other"
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        # Serve's proxy returns the id in the X-Request-ID response header itself.
        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
            await send(message)

        try:
            limit = scope["app"].state.max_body_bytes
            body = await _read_limited_body(headers, receive, limit)
            if body is None:
                await _reply(send_tracked, PayloadTooLargeError.status_code, error_body(
                    PayloadTooLargeError.kind, f"request body is larger than the limit of {limit} bytes",
                    request_id))
                metrics.ERRORS.labels(PayloadTooLargeError.kind).inc()
                return
            await self.app(scope, _replay(body, receive), send_tracked)
        except Exception:
            log.exception("request %s failed with an unexpected error", request_id)
            metrics.ERRORS.labels("internal").inc()
            if not status["sent"]:
                await _reply(send_tracked, 500, error_body("internal", "internal server error", request_id))
        finally:
            metrics.REQUEST_LATENCY.labels(route, str(status["code"])).observe(time.perf_counter() - started)


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


async def _reply(send: Send, status_code: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status_code,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
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


def require_token(request: Request) -> None:
    """FastAPI dependency guarding /v1: `Authorization: Bearer <token>` when a token is configured."""
    expected: str | None = request.app.state.api_token
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise UnauthorizedError("missing or wrong bearer token: send 'Authorization: Bearer <token>'")


def _json_error(request: Request, status_code: int, kind: str, message: str,
                headers: dict[str, str] | None = None) -> JSONResponse:
    metrics.ERRORS.labels(kind).inc()
    request_id = request_id_of(request)
    if status_code >= 500:
        log.error("request %s: %s: %s", request_id, kind, message)
    else:
        log.info("request %s rejected: %s: %s", request_id, kind, message)
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

    @app.exception_handler(BackPressureError)
    async def overloaded(request: Request, exc: BackPressureError) -> JSONResponse:
        return _json_error(request, 503, "overloaded", "the ranker's queue is full; retry later")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return _json_error(request, exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail))
