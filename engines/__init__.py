"""What generates tokens: the engine interface and its implementations.

This package never imports `gateway`, FastAPI or Starlette; the gateway depends on it,
not the other way round.
"""
