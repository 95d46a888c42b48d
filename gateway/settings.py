"""Typed settings, built once at start-up and passed explicitly.

Sources, highest first: CLI flags (passed as keyword overrides), environment
variables (`SWITCHYARD_PORT=9000`, nested with `__`, lists and objects as JSON), the
YAML file (`--config FILE` or `SWITCHYARD_CONFIG`), then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class AdapterSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: Path


class EngineSettings(BaseModel):
    """One engine serving one base model under `model_id` (the OpenAI `model` name),
    with the LoRA adapters loaded at start-up and the root runtime loads come from.
    Engines sharing a `model_id` form a pool behind the balancer."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str = "vllm"
    model_id: str
    options: dict[str, Any] = Field(default_factory=dict)
    adapters: list[AdapterSettings] = Field(default_factory=list)
    adapter_root: Path | None = None
    max_in_flight: int | None = Field(None, ge=1)
    # More names adapters may give as their base (a remote engine's upstream model).
    base_names: list[str] = Field(default_factory=list)


PolicyName = Literal["round_robin", "least_outstanding", "adapter_affinity", "prefix_affinity"]


class BalancerSettings(BaseModel):
    """How requests for one model spread over the engines that serve it (engines
    with the same `model_id` form a pool). See gateway/balancer/ for the semantics."""

    model_config = ConfigDict(extra="forbid")

    policy: PolicyName = "adapter_affinity"
    policies: dict[str, PolicyName] = Field(default_factory=dict)  # per model id
    load_factor: float = Field(1.25, ge=1.0)
    prefix_chars: int = Field(256, ge=1)
    max_attempts: int = Field(3, ge=1)
    retry_budget: float = Field(0.2, ge=0.0, le=1.0)  # share of in-flight requests retrying
    # A stream cut after its first chunk goes on on another backend (gateway/resume.py):
    # `resume` for every model, `resume_models` per model id; each resume within the
    # retry budget, and from the cut to its first chunk within resume_deadline_s.
    resume: bool = True
    resume_models: dict[str, bool] = Field(default_factory=dict)
    resume_attempts: int = Field(1, ge=0)
    resume_deadline_s: float = Field(30.0, gt=0)
    queue_size: int = Field(256, ge=0)
    queue_timeout_s: float = Field(30.0, gt=0)
    probe_interval_s: float = Field(5.0, gt=0)
    probe_timeout_s: float = Field(2.0, gt=0)
    unhealthy_after: int = Field(2, ge=1)
    healthy_after: int = Field(1, ge=1)
    eject_after: int = Field(3, ge=1)
    ejection_s: float = Field(5.0, gt=0)
    max_ejection_s: float = Field(60.0, gt=0)


CacheMode = Literal["deterministic", "all", "off"]


class RedisConnection(BaseModel):
    """Where a section kept in Redis is: its URL, the prefix of its keys, the bound on
    each call, and the environment variable holding Redis's password (`requirepass`;
    none: the URL's, if any). Each section opens its own client
    (gateway/redis_client.py): their call budgets differ tenfold."""

    model_config = ConfigDict(extra="forbid")

    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "switchyard:"
    timeout_s: float = Field(0.05, gt=0)  # per Redis call
    password_env: str | None = None


class RedisBacked(RedisConnection):
    """A section answered from Redis per request (the cache, rate limits, stored
    responses): also how long to leave Redis alone after a failure
    (gateway/backoff.py)."""

    retry_after_s: float = Field(1.0, ge=0)  # after a Redis failure, before trying again


class AdapterRegistrySettings(RedisConnection):
    """Where runtime adapter loads and unloads are agreed on (gateway/adapter_ledger.py):
    `local`, by this gateway's processes (its workers share a file); `redis`, by every
    gateway replica using that Redis, on any host. Shared, a load or unload through
    one gateway reaches the others within a probe interval, and an unload answers once
    no gateway routes to the adapter or has requests on it. A gateway that stops
    beating holds nothing after `stale_after_s` (default: 3 probe intervals, 10 s at
    least)."""

    backend: Literal["local", "redis"] = "local"
    prefix: str = "switchyard:adapters:"
    timeout_s: float = Field(2.0, gt=0)
    stale_after_s: float | None = Field(None, gt=0)


class CacheSettings(RedisBacked):
    """The response cache (gateway/cache/). `mode` says which requests may be answered
    from it: `deterministic` (temperature 0, or a seed given), `all` (sampled answers
    too: replays of an evaluation), or `off`; `modes` overrides it per model id."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["memory", "redis", "none"] = "memory"
    mode: CacheMode = "deterministic"
    modes: dict[str, CacheMode] = Field(default_factory=dict)
    ttl_s: float = Field(3600.0, gt=0)
    max_bytes: int = Field(256 * 1024 * 1024, gt=0)  # memory backend
    max_entry_bytes: int = Field(1024 * 1024, gt=0)  # a larger answer is not stored
    # past timeout_s (RedisBacked) the cache is skipped


class ResponseStoreSettings(RedisBacked):
    """Where `/v1/responses` answers stored with `store: true` live, for
    `previous_response_id` and `GET /v1/responses/{id}`: this process (`memory`),
    Redis shared by gateway replicas (`redis`), or nowhere (`none`: stored state is
    refused with a 400). See gateway/responses/store.py."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["memory", "redis", "none"] = "memory"
    ttl_s: float = Field(86400.0, gt=0)
    max_bytes: int = Field(256 * 1024 * 1024, gt=0)  # memory backend, all records
    max_record_bytes: int = Field(8 * 1024 * 1024, gt=0)  # one response and its history
    prefix: str = "switchyard:resp:"
    timeout_s: float = Field(0.5, gt=0)  # per Redis call; past it, a 503
    retry_after_s: float = Field(0.0, ge=0)  # 0: every request tries (each 503 is the client's)


class KeySettings(BaseModel):
    """One API key, by the sha256 of its text (`switchyard hash-key`) or the name of the
    environment variable holding it. `models` lists the model ids and adapter names it
    may use (shell patterns; "*" = all); an adapter is not implied by its base. There
    is no default: a key names what it may use, if only `["*"]`."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1)  # in metrics and logs, never the key
    key_sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$")
    key_env: str | None = None
    models: list[str] | None = None  # required (see _complete)
    admin: bool = False  # may manage adapters and see backend details
    rpm: int | None = Field(None, ge=1)  # requests per minute
    tpm: int | None = Field(None, ge=1)  # prompt + completion tokens per minute
    max_tokens: int | None = Field(None, ge=1)  # cap, and the default when unset
    max_concurrent: int | None = Field(None, ge=1)  # in flight; None: the auth default
    revoked: bool = False

    @model_validator(mode="after")
    def _complete(self) -> KeySettings:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError(f"key {self.label!r}: give exactly one of key_sha256, key_env")
        if self.models is None:
            raise ValueError(
                f"key {self.label!r} names no models: list the model ids and adapters it "
                "may use (shell patterns), e.g. models: ['*'] for all"
            )
        return self


class RateLimitSettings(RedisBacked):
    """Where the per-key token buckets live: in this process, or in Redis (shared by
    gateway replicas, updated atomically by a Lua script)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["memory", "redis"] = "memory"
    prefix: str = "switchyard:rl:"
    on_redis_error: Literal["allow", "deny"] = "allow"  # fail open, or closed (503)
    # Reserve a request's worst case at admission (off: tokens are charged only when
    # requests end, so a burst may overrun by its size; `make bench-auth` compares).
    reserve: bool = True


class AuthSettings(BaseModel):
    """API keys (`Authorization: Bearer KEY`). On unless turned off; off, the gateway
    refuses to listen beyond loopback unless `allow_public_without_auth`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    keys: list[KeySettings] = Field(default_factory=list)
    keys_file: Path | None = None  # YAML list of keys; re-read when it changes
    allow_public_without_auth: bool = False
    public_metrics: bool = False  # /metrics without a key (no key labels even then)
    max_concurrent_per_key: int | None = Field(64, ge=1)  # requests in flight, per process
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    max_n: int = Field(16, ge=1)
    max_prompts: int = Field(256, ge=1)  # prompts in one /v1/completions batch
    max_generations: int = Field(256, ge=1)  # n times prompts: generations one request starts
    default_max_tokens: int | None = Field(4096, ge=1)  # when neither request nor key sets one
    stream_send_timeout_s: float = Field(30.0, gt=0)  # a client not reading is cut
    shutdown_grace_s: int = Field(30, ge=0)
    # Worker processes on one socket, for engines that are all remote (gateway/workers/):
    # 1 is one process, as ever; more share limits, adapters and metrics, or are refused.
    workers: int = Field(1, ge=1, le=32)
    metrics: bool = True  # /metrics and request metrics
    access_log: bool = True  # one JSON line per generation request
    log_prompts: bool = False  # put prompt text in access-log lines
    engines: list[EngineSettings] = Field(default_factory=list)
    balancer: BalancerSettings = Field(default_factory=BalancerSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    responses: ResponseStoreSettings = Field(default_factory=ResponseStoreSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    adapter_registry: AdapterRegistrySettings = Field(default_factory=AdapterRegistrySettings)
    max_messages: int = Field(1024, ge=1)
    max_embedding_inputs: int = Field(2048, ge=1)  # texts, token lists or conversations
    max_tools: int = Field(128, ge=0)  # tools (or functions) in one request
    max_schema_bytes: int = Field(64 * 1024, gt=0)  # one tool's parameters, a response schema
    cors_origins: list[str] = Field(default_factory=list)  # none: CORS off

    @field_validator("engines")
    @classmethod
    def _unique_names(cls, engines: list[EngineSettings]) -> list[EngineSettings]:
        names = [e.name for e in engines]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"engine names must be unique; repeated: {', '.join(duplicates)}")
        return engines

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


class SettingsFileError(Exception):
    pass


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from the YAML file, the environment and `overrides` (None = not given)."""
    path = config_file or os.environ.get("SWITCHYARD_CONFIG")
    if path is not None and not Path(path).is_file():
        raise SettingsFileError(f"config file {path} does not exist")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(yaml_file=path)

    given = {key: value for key, value in overrides.items() if value is not None}
    return _FromFile(**given)
