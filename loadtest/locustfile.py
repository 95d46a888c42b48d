"""OpenAI-style users for Switchyard (or any OpenAI-compatible server).

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless \
        -u 10 -r 5 -t 1m --csv reports/run --html reports/run.html \
        --adapters shout,json --zipf-s 1.1 --stream-fraction 0.8 --repeat-fraction 0.2

Besides each request's end-to-end time (the usual POST rows), every streamed answer
reports, as locust request types (a streamed POST row itself times the response
headers only):
  E2E         time to the end of the stream, ms
  TTFT        time to the first content token, ms
  ITL         mean gap between content chunks after the first, ms
  TOKENS/S    output tokens per second of that request ("response time" column = tokens/s)
Knobs are flags or environment variables (SWITCHYARD_LOAD_<FLAG>, e.g.
SWITCHYARD_LOAD_MAX_TOKENS=128); the API key comes from OPENAI_API_KEY.
- model + adapters: the names requests use, chosen by Zipf popularity (s = --zipf-s)
  in the order given (the model first);
- prompts: one prompt per line of --prompts (default: loadtest/prompts.txt), each
  repeated --prompt-repeat times to make longer prompts;
- --repeat-fraction: share of requests that repeat an earlier (model, prompt) at
  temperature 0, which the gateway's cache may answer; the others ask it not to
  (`Cache-Control: no-cache`), so they always reach an engine;
- --think-time: mean seconds a user waits between requests (exponential).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

from locust import HttpUser, events, task
from locust.env import Environment

PROMPTS = Path(__file__).resolve().with_name("prompts.txt")


@events.init_command_line_parser.add_listener
def _flags(parser: Any) -> None:
    def env(name: str, default: str) -> str:
        return os.environ.get(f"SWITCHYARD_LOAD_{name.upper()}", default)

    group = parser.add_argument_group("switchyard")
    group.add_argument(
        "--model", default=os.environ.get("SWITCHYARD_MODEL", "smollm2-135m-instruct")
    )
    group.add_argument("--adapters", default=env("adapters", ""), help="comma-separated names")
    group.add_argument("--zipf-s", type=float, default=float(env("zipf_s", "1.0")))
    group.add_argument("--prompts", default=env("prompts", str(PROMPTS)))
    group.add_argument("--prompt-repeat", type=int, default=int(env("prompt_repeat", "1")))
    group.add_argument("--max-tokens", type=int, default=int(env("max_tokens", "64")))
    group.add_argument(
        "--stream-fraction", type=float, default=float(env("stream_fraction", "1.0"))
    )
    group.add_argument(
        "--repeat-fraction", type=float, default=float(env("repeat_fraction", "0.0"))
    )
    group.add_argument("--think-time", type=float, default=float(env("think_time", "0.0")))


class Workload:
    """What the users send, built once from the parsed options."""

    def __init__(self, options: Any) -> None:
        names = [options.model, *(a for a in options.adapters.split(",") if a)]
        self.names = names
        self.weights = [1 / rank**options.zipf_s for rank in range(1, len(names) + 1)]
        lines = Path(options.prompts).read_text().splitlines()
        self.prompts = [" ".join([p] * options.prompt_repeat) for p in lines if p.strip()]
        if not self.prompts:
            raise SystemExit(f"{options.prompts} holds no prompts")
        self.options = options
        self.sent: list[tuple[str, str]] = []

    def next(self, rng: random.Random) -> tuple[str, str, bool]:
        """(model, prompt, repeated)."""
        if self.sent and rng.random() < self.options.repeat_fraction:
            return (*rng.choice(self.sent), True)
        model = rng.choices(self.names, self.weights)[0]
        prompt = rng.choice(self.prompts)
        self.sent.append((model, prompt))
        del self.sent[:-1000]
        return model, prompt, False


class ChatUser(HttpUser):
    """One OpenAI SDK-like client calling /v1/chat/completions."""

    workload: Workload | None = None

    def wait_time(self) -> float:
        mean = self.environment.parsed_options.think_time
        return random.expovariate(1 / mean) if mean > 0 else 0.0

    def on_start(self) -> None:
        if ChatUser.workload is None:
            ChatUser.workload = Workload(self.environment.parsed_options)
        self.rng = random.Random()
        key = os.environ.get("OPENAI_API_KEY")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    @task
    def chat(self) -> None:
        assert self.workload is not None
        options = self.environment.parsed_options
        model, prompt, repeated = self.workload.next(self.rng)
        stream = self.rng.random() < options.stream_fraction
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": options.max_tokens,
            "temperature": 0,
            "stream": stream,
        }
        headers = dict(self.headers)
        if not repeated:
            headers["Cache-Control"] = "no-cache"
        if stream:
            body["stream_options"] = {"include_usage": True}
            self._stream(body, headers)
        else:
            self._complete(body, headers)

    def _complete(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        name = "/v1/chat/completions"
        with self.client.post(name, json=body, headers=headers, catch_response=True) as response:
            if _refused(response):
                return
            usage = response.json().get("usage") or {}
            seconds = response.elapsed.total_seconds()
            if usage.get("completion_tokens") and seconds > 0:
                _report(self.environment, "TOKENS/S", name, usage["completion_tokens"] / seconds)

    def _stream(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        name = "/v1/chat/completions (stream)"
        started = time.perf_counter()
        arrivals: list[float] = []
        tokens = 0
        done = False
        with self.client.post(
            "/v1/chat/completions", json=body, headers=headers, stream=True, catch_response=True,
            name=name,
        ) as response:  # fmt: skip
            if _refused(response):
                return
            for line in response.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                data = line[6:]
                if data == b"[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    response.failure(f"error event: {event['error'].get('message')}")
                    return
                if any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                    arrivals.append(time.perf_counter())
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
            if not done or not arrivals:
                response.failure("the stream ended without content or [DONE]")
                return
        env = self.environment
        _report(env, "E2E", name, (time.perf_counter() - started) * 1000)
        _report(env, "TTFT", name, (arrivals[0] - started) * 1000)
        if len(arrivals) > 1:
            _report(env, "ITL", name, (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) * 1000)
        if tokens and arrivals[-1] > started:
            _report(env, "TOKENS/S", name, tokens / (arrivals[-1] - started))


def _refused(response: Any) -> bool:
    """Count a non-200 as a failure, with the body's start (or the connection error)."""
    if response.status_code == 200:
        return False
    response.failure(f"HTTP {response.status_code}: {response.error or response.text[:200]}")
    return True


def _report(environment: Environment, kind: str, name: str, value: float) -> None:
    environment.events.request.fire(
        request_type=kind, name=name, response_time=value, response_length=0, exception=None,
        context={},
    )  # fmt: skip
