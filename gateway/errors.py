"""The gateway's error tree, and the one renderer of OpenAI error bodies.

    GatewayError                    500 server_error
    ├── InvalidRequest              400 invalid_request_error (names `param`)
    ├── ModelNotFound               404 invalid_request_error, code model_not_found
    ├── NotFound                    404 invalid_request_error (unknown route)
    ├── MethodNotAllowed            405 invalid_request_error
    ├── PayloadTooLarge             413 invalid_request_error
    ├── ClientClosedRequest         499 (nobody reads it: the client is gone)
    └── ServiceUnavailable          503 service_unavailable (engine loading or down)

Engine errors (`engines.errors`) are translated by `from_engine_error`; anything else
becomes a bare 500 whose body carries the request id but never a stack trace.
Every body is `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Any

import orjson

from engines import errors as engine_errors


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

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


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


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


class ClientClosedRequest(GatewayError):
    status = 499
    type = "invalid_request_error"

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the response was ready.")


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"


def from_engine_error(exc: engine_errors.EngineError) -> GatewayError:
    if isinstance(exc, engine_errors.ContextLengthExceeded):
        return InvalidRequest(exc.message, param=exc.param, code="context_length_exceeded")
    if isinstance(exc, engine_errors.UnsupportedParameter):
        return InvalidRequest(exc.message, param=exc.param, code="unsupported_parameter")
    if isinstance(exc, engine_errors.InvalidGenerationRequest):
        return InvalidRequest(exc.message, param=exc.param)
    if isinstance(exc, engine_errors.EngineUnavailable):
        return ServiceUnavailable(exc.message)
    return GatewayError(f"The engine failed while generating: {exc.message}")


def internal_error(request_id: str | None) -> GatewayError:
    ref = f" (request id {request_id})" if request_id else ""
    return GatewayError(f"Internal error{ref}. It has been logged; retrying may help.")
