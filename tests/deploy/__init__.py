"""Helpers shared by the deploy tests."""

from __future__ import annotations


def shutdown_timeout_s(args: list[str]) -> int:
    """The seconds of a `vllm serve` command line's --shutdown-timeout=N."""
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith("--shutdown-timeout=")]
    return int(value)
