"""`switchyard serve`: run the gateway.

    switchyard serve --config configs/demo.yaml [--host H] [--port P] [--workers N]
    switchyard serve --model models/smollm2-135m-instruct --served-model-name NAME
    switchyard bench SUITE [--requests N ...]
    switchyard hash-key [--new]       # the sha256 for auth.keys (key read from stdin)

Flags override `SWITCHYARD_*` environment variables, which override the YAML file.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import secrets
import sys
from pathlib import Path

import pydantic

from engines.errors import EngineError
from gateway.auth.keys import KeyConfigError, digest
from gateway.redis_client import RedisConfigError
from gateway.settings import EngineSettings, Settings, SettingsFileError, load_settings

# `switchyard bench NAME` runs gateway/bench/NAME.py (dashes as underscores).
BENCHMARKS = [
    "engine", "embeddings", "adapters", "routing", "http-clients", "metrics", "cache", "auth",
    "artifacts", "overhead", "resume", "suite", "frontend", "workers", "profile",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="switchyard", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="YAML settings file")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument(
        "--workers", type=int, help="worker processes on one socket (remote engines only)"
    )
    serve.add_argument("--model", help="serve this model directory with the vllm engine")
    serve.add_argument("--served-model-name", help="the model id clients use (with --model)")
    serve.add_argument(
        "--no-auth", action="store_true", help="serve without API keys (loopback only)"
    )
    hash_key = sub.add_parser("hash-key", help="print the sha256 of an API key (for auth.keys)")
    hash_key.add_argument("--new", action="store_true", help="make a new random key first")
    bench = sub.add_parser("bench", help="benchmarks: `switchyard bench engine --help`")
    bench.add_argument(
        "suite",
        choices=BENCHMARKS,
    )
    bench.add_argument("options", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "hash-key":
        return _hash_key(args.new)
    if args.command == "bench":
        import importlib

        suite = importlib.import_module(f"gateway.bench.{args.suite.replace('-', '_')}")
        status: int = suite.main(args.options)
        return status

    engines = None
    if args.model:
        model_id = args.served_model_name or Path(args.model).name
        engines = [
            EngineSettings(
                name="cli", kind="vllm", model_id=model_id, options={"model": args.model}
            )
        ]
    try:
        no_auth = {"enabled": False} if args.no_auth else None
        settings = load_settings(
            args.config,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            workers=args.workers,
            engines=engines,
            auth=no_auth,
        )
    except (SettingsFileError, pydantic.ValidationError) as exc:
        print(f"switchyard: invalid settings: {exc}", file=sys.stderr)
        return 2
    if not settings.engines:
        print(
            "switchyard: no engines configured; pass --config FILE or --model PATH", file=sys.stderr
        )
        return 2

    from gateway.workers.plan import per_worker, refusals

    refused = refusals(settings)
    if refused:
        for problem in refused:
            print(
                f"switchyard: cannot serve with {settings.workers} workers: {problem}",
                file=sys.stderr,
            )
        return 2

    import uvicorn

    from gateway.app import create_app

    configure_logging(settings)
    if not settings.auth.enabled and not _loopback(settings.host):
        if not settings.auth.allow_public_without_auth:
            print(
                f"switchyard: refusing to serve on {settings.host} without API keys: configure"
                " auth.keys, or bind 127.0.0.1, or set auth.allow_public_without_auth: true",
                file=sys.stderr,
            )
            return 2
        logging.getLogger("switchyard").warning("serving on %s WITHOUT API keys", settings.host)
    try:
        # With workers, each builds its own app: this one only checks the settings.
        app = create_app(settings if settings.workers == 1 else per_worker(settings)[0])
    except (EngineError, KeyConfigError, RedisConfigError) as exc:
        print(f"switchyard: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        from gateway.workers.supervisor import serve as serve_workers

        return serve_workers(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # ours (switchyard.access) says more, as JSON
        # On SIGTERM uvicorn stops accepting, lets open requests and streams finish
        # for up to this long, then cancels them and runs the lifespan's shutdown.
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    return 0


def configure_logging(settings: Settings) -> None:
    """The gateway's log (level, format) and its access log: one JSON object a line
    on stderr, or off. Each worker process calls it too."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    access = logging.getLogger("switchyard.access")
    access.propagate = False  # its lines are JSON objects, alone on their line
    if settings.access_log:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
    else:
        access.disabled = True


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hash_key(new: bool) -> int:
    if new:
        key = "sy-" + secrets.token_urlsafe(32)
        print(f"key:        {key}   (give it to the caller; it is not stored)")
    else:
        key = sys.stdin.readline().strip()
        if not key:
            print("switchyard: give the key on stdin, or --new", file=sys.stderr)
            return 2
    print(f"key_sha256: {digest(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
