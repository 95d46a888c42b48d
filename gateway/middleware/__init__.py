"""Cross-cutting concerns as pure ASGI middleware (no BaseHTTPMiddleware: it buffers
streams and breaks contextvars). The order is set in `gateway.app`."""
