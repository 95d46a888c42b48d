"""Settings the tests share."""

from gateway.settings import AuthSettings

# Gateways started by tests listen on loopback; the auth tests turn keys on themselves.
NO_AUTH = AuthSettings(enabled=False)
