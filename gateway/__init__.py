"""Switchyard's HTTP service: an OpenAI-compatible gateway in front of engines."""
