"""The gateway's error tree, and the one renderer of OpenAI error bodies.

    GatewayError                    500 server_error
    ├── InvalidRequest              400 invalid_request_error (names `param`)
    ├── Unauthorized                401 invalid_request_error, code invalid_api_key
    ├── PermissionDenied            403 permission_error
    ├── ModelNotFound               404 invalid_request_error, code model_not_found
    ├── NotFound                    404 invalid_request_error (unknown route)
    ├── MethodNotAllowed            405 invalid_request_error
    ├── PayloadTooLarge             413 invalid_request_error
    ├── Overloaded                  429 rate_limit_error, code server_overloaded, Retry-After
    ├── RateLimited                 429 rate_limit_error, code rate_limit_exceeded, x-ratelimit-*
    ├── ClientClosedRequest         499 (nobody reads it: the client is gone)
    └── ServiceUnavailable          503 service_unavailable (engine loading or down)

Engine errors (`engines.errors`) and the balancer's (`gateway.balancer.errors`) are
translated by `as_gateway_error`, the one map from an exception to what the client
reads (`status_of` for its status); anything else becomes a bare 500 whose body
carries the request id but never a stack trace.
Every body is `{"error": {"message", "type", "param", "code"}}`. Callers without an
admin key read server-side failures through `for_caller`: what happened and the
request id, never upstream URLs, bodies, exception text or backend names (those are
logged under the request id).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.responses import Response

from engines import errors as engine_errors
from gateway.balancer.errors import BalancerError, NoBackend

log = logging.getLogger("switchyard")


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    headers: dict[str, str] = {}  # replaced, never mutated
    internal = False  # the message tells of backends: admins only (`for_caller`)
    public: str | None = None  # what others read then (else a word on what happened)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json(self) -> bytes:
        return orjson.dumps(self.body())

    def response(self) -> Response:
        """This error as the HTTP response that carries it: status, headers, body (an
        ASGI app: middleware awaits it with the scope, as routes return it)."""
        return Response(
            self.json(), self.status, headers=self.headers, media_type="application/json"
        )


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    headers = {"WWW-Authenticate": "Bearer"}

    def __init__(self) -> None:
        super().__init__(
            "Missing or incorrect API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist. GET /v1/models lists the models served here.",
            param="model",
        )


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "server_overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


class ClientClosedRequest(GatewayError):
    status = 499
    type = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the response was ready.")


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"


class HTTPStatusError(GatewayError):
    """Any other status a route or the framework answers with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.type = "invalid_request_error" if status < 500 else "server_error"


def as_gateway_error(exc: BaseException) -> GatewayError | None:
    """`exc` as the client reads it: the gateway's own errors as they are, the
    engines' and the balancer's translated; None for anything else (a bug: a 500)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, engine_errors.EngineError):
        return from_engine_error(exc)
    if isinstance(exc, BalancerError):
        if isinstance(exc, NoBackend):
            error = ServiceUnavailable(exc.message)
            error.internal = True  # names the backends
            return error
        return Overloaded(exc.message)
    return None


def status_of(exc: BaseException) -> int:
    """The HTTP status a request failing with `exc` is answered with."""
    error = as_gateway_error(exc)
    return error.status if error is not None else 500


def from_engine_error(exc: engine_errors.EngineError) -> GatewayError:
    if isinstance(exc, engine_errors.InvalidGenerationRequest):
        return InvalidRequest(exc.message, param=exc.param, code=exc.code)
    error: GatewayError
    if isinstance(exc, engine_errors.EngineOverloaded):
        error = Overloaded(exc.message)
    elif isinstance(exc, engine_errors.EngineUnavailable):
        error = ServiceUnavailable(exc.message)
    else:
        error = GatewayError(f"The engine failed while generating: {exc.message}")
    error.internal, error.public = True, exc.public
    return error


_TOLD = {
    429: "The model's backends are at capacity",
    500: "The engine failed while generating",
    503: "No backend could serve this request",
    504: "No backend answered in time",
}


def for_caller(error: GatewayError, request_id: str | None, admin: bool) -> GatewayError:
    """`error` as a caller may read it: whole for admins, and unless it tells of
    backends (`internal`: an engine's failure, a pool's account of its backends);
    then what happened and the request id, the detail logged under that id."""
    if admin or not error.internal:
        return error
    log.warning("request %s failed: %s", request_id, error.message)
    said = copy.copy(error)
    if error.public:
        said.message = f"{error.public} (request id {request_id})"
    else:
        told = _TOLD.get(error.status, "The request failed")
        said.message = f"{told} (request id {request_id}); retry shortly."
    return said


def internal_error(request_id: str | None) -> GatewayError:
    ref = f" (request id {request_id})" if request_id else ""
    return GatewayError(f"Internal error{ref}. It has been logged; retrying may help.")


def invalid_body(errors: Sequence[Any]) -> InvalidRequest:
    """A pydantic error list → one 400 that names the field most likely at fault."""
    # Of a union's failed branches, the deepest error is the one that explains most.
    first = max(errors, key=lambda e: len(e.get("loc", ())), default=None) or {}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return InvalidRequest(f"The request body is not valid JSON ({detail}).".replace(" ()", ""))
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = _dotted(loc)
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif not loc:
        message = f"The request body is invalid: {first.get('msg', 'not an object')}."
    else:
        message = f"Invalid value for '{param}': {_reason(first)}."
    more = len(errors) - 1
    if more:
        message += f" ({more} more problem{'s' if more > 1 else ''} in the body.)"
    return InvalidRequest(message, param=param or None)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "TextPart", "ChatMessage"}


def _dotted(loc: list[str]) -> str:
    """("messages", "0", "content") → "messages[0].content", skipping union branch tags."""
    out = ""
    for part in loc:
        if part.isdigit():
            out += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in part or "-" in part:
            continue
        else:
            out += f".{part}" if out else part
    return out


def _reason(error: Any) -> str:
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")
