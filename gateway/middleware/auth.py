"""Authenticate every request before a route sees it: `Authorization: Bearer KEY`.

The principal is stored in `scope["state"]["principal"]` (None on an open path called
without a valid key; gateway/state.py reads it). Open paths (liveness,
readiness, and /metrics unless made private) answer without a key; everything else
without a valid key gets 401, and admin paths (adapter management) 403 for keys that
are not admin. With auth off every request is the all-allowed `ANONYMOUS`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth.keys import ANONYMOUS, KeyRing, Principal
from gateway.errors import PermissionDenied, Unauthorized

ADMIN_PREFIXES = ("/v1/adapters",)


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyRing | None, open_paths: frozenset[str]) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if self.keys is None:
            state["principal"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        principal = self._principal(scope)
        state["principal"] = principal
        path: str = scope["path"]
        if path in self.open_paths:
            await self.app(scope, receive, send)
            return
        if principal is None:
            await Unauthorized().response()(scope, receive, send)
            return
        if path.startswith(ADMIN_PREFIXES) and not principal.admin:
            refusal = PermissionDenied("This API key may not manage adapters.")
            await refusal.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _principal(self, scope: Scope) -> Principal | None:
        assert self.keys is not None
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.keys.authenticate(token.strip())
