"""Cross-cutting concerns as pure ASGI middleware (not Starlette's base-class kind: it
buffers streams and breaks contextvars). The order is set in `gateway.app`."""
