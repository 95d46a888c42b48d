"""LoRA adapters as model names, on the real vLLM engine with the demo adapters
(`shout`: UPPERCASE answers; `json`: {"answer": ...})."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import threading
from pathlib import Path

import httpx
import pytest
from openai import AsyncOpenAI, NotFoundError, OpenAI

from engines.artifacts.train_lora import EXTRA_PROMPTS
from tests.e2e.conftest import ADAPTERS, MODEL_ID, Gateway
from tests.servers import wait_until

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]


def lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


PROMPTS = lines(ROOT / "loadtest" / "prompts.txt")
DATA = ROOT / "engines" / "artifacts" / "data"
# Prompts the demo adapters never saw in training (adapter_prompts.txt, and the json
# adapter's extra ones).
HELD_OUT = sorted(
    set(
        PROMPTS
        + lines(DATA / "eval_prompts.txt")
        + lines(Path(__file__).resolve().parent / "data" / "held_out_prompts.txt")
    )
    - set(lines(DATA / "adapter_prompts.txt"))
    - set(EXTRA_PROMPTS["json"])
)


def upper_ratio(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


def is_json_answer(text: str) -> bool:
    try:
        value = json.loads(text.strip())
    except ValueError:
        return False
    return isinstance(value, dict) and "answer" in value


def ask(client: OpenAI, model: str, prompt: str = "Why is the sky blue?") -> str:
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=160,
    )
    return r.choices[0].message.content or ""


def adapters(gateway: Gateway) -> dict[str, dict[str, object]]:
    data = httpx.get(gateway.url + "/v1/adapters").json()["data"]
    return {a["name"]: a for a in data}


def load(gateway: Gateway, name: str, path: str | Path) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/adapters", json={"name": name, "path": str(path)}, timeout=120
    )


def test_models_list_adapters_under_their_base(client: OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    for name in ("shout", "json"):
        assert models[name].model_extra is not None
        assert models[name].model_extra["parent"] == MODEL_ID
    assert models[MODEL_ID].model_extra is not None
    assert models[MODEL_ID].model_extra["parent"] is None


async def test_mixed_concurrent_batch_has_no_cross_talk(gateway: Gateway) -> None:
    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    plan = [(["base", "shout", "json"][i % 3], i % 2 == 0, PROMPTS[i]) for i in range(30)]

    async def one(model: str, stream: bool, prompt: str) -> str:
        target = MODEL_ID if model == "base" else model
        messages = [{"role": "user", "content": prompt}]
        if not stream:
            r = await client.chat.completions.create(
                model=target,
                messages=messages,
                temperature=0,
                max_tokens=160,  # type: ignore[arg-type]
            )
            return r.choices[0].message.content or ""
        chunks = await client.chat.completions.create(
            model=target,
            messages=messages,
            temperature=0,
            max_tokens=160,
            stream=True,  # type: ignore[arg-type]
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

    answers = await asyncio.gather(*(one(*p) for p in plan))
    by_model: dict[str, list[str]] = {"base": [], "shout": [], "json": []}
    for (model, _, _), answer in zip(plan, answers, strict=True):
        by_model[model].append(answer)
    shouted = [a for a in by_model["shout"] if upper_ratio(a) >= 0.8]
    assert len(shouted) >= 0.9 * len(by_model["shout"]), by_model["shout"]
    as_json = [a for a in by_model["json"] if is_json_answer(a)]
    assert len(as_json) >= 0.9 * len(by_model["json"]), by_model["json"]
    for answer in by_model["base"]:
        assert upper_ratio(answer) < 0.8, answer
        assert not is_json_answer(answer), answer


def breaks_its_string(text: str) -> bool:
    """A raw line break, or a `"` inside the answer's string: what a JSON string cannot
    carry unescaped, and what this adapter wrote before its training answers were put
    on one line with single quotes."""
    body = text.strip().removeprefix('{"answer": "')
    closed = re.fullmatch(r'(.*)"\W*', body, re.DOTALL)  # up to the closing quote, if any
    inner = closed.group(1) if closed else body
    return "\n" in text or '"' in inner


async def test_json_answers_to_prompts_it_never_saw_parse(gateway: Gateway) -> None:
    """The `json` adapter on 80-odd prompts it never saw (temperature 0): at most one
    answer breaks its string with a raw newline or quote (before the fix, 7 of 83 did,
    quotes mostly), and all but a few parse into {"answer": ...}. The few are this 135M
    model's own slips, not escaping: a greedy answer that loops until max_tokens, a `")`
    for a `"}`, or a list closed early (`...life." 2." 3."`). Greedy answers are not the
    same from run to run here: 83 requests at once are batched as they arrive, and the
    CPU kernels' sums change with the batch, so one slip may land on a quote (CI saw
    that once, at stop 31)."""
    assert len(HELD_OUT) >= 80
    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)

    async def one(prompt: str) -> tuple[str, str | None, str]:
        r = await client.chat.completions.create(
            model="json",
            messages=[{"role": "user", "content": prompt}],
            temperature=0,
            max_tokens=200,
        )
        return prompt, r.choices[0].finish_reason, r.choices[0].message.content or ""

    answers = await asyncio.gather(*(one(p) for p in HELD_OUT))
    await client.close()
    unparsed = [a for a in answers if a[1] != "stop" or not is_json_answer(a[2])]
    broken = [a for a in unparsed if breaks_its_string(a[2])]
    assert len(broken) <= 1, f"{len(broken)} of {len(answers)} answers break their string: {broken}"
    assert len(unparsed) <= len(answers) // 20, f"{len(unparsed)} do not parse: {unparsed}"


def test_load_at_runtime_while_another_adapter_streams(gateway: Gateway, client: OpenAI) -> None:
    body = {
        "model": "shout",
        "messages": [{"role": "user", "content": "Tell me about the ocean."}],
        "max_tokens": 120,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        first = [next(lines) for _ in range(6)]
        loaded = load(gateway, "json-live", "json")  # relative to the adapter root
        assert loaded.status_code == 200, loaded.text
        assert is_json_answer(ask(client, "json-live"))
        rest = list(lines)
    events = [json.loads(x[6:]) for x in first + rest if x.startswith("data: {")]
    assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    assert upper_ratio(text) >= 0.8


def test_unload_drains_in_flight_then_404(gateway: Gateway, client: OpenAI) -> None:
    assert load(gateway, "json-drain", "json").status_code == 200
    body = {
        "model": "json-drain",
        "messages": [{"role": "user", "content": "Describe a forest."}],
        "max_tokens": 120,
        "temperature": 0,
        "stream": True,
    }
    deleted: list[httpx.Response] = []
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=120) as r:
        lines = r.iter_lines()
        first = [next(lines) for _ in range(4)]
        remover = threading.Thread(
            target=lambda: deleted.append(
                httpx.delete(gateway.url + "/v1/adapters/json-drain", timeout=120)
            )
        )
        remover.start()
        assert wait_until(lambda: adapters(gateway)["json-drain"]["state"] == "draining", 10)
        assert adapters(gateway)["json-drain"]["in_flight"] == 1
        with pytest.raises(NotFoundError):
            ask(client, "json-drain")
        rest = list(lines)
    remover.join(timeout=60)
    text = "".join(
        json.loads(x[6:])["choices"][0]["delta"].get("content") or ""
        for x in first + rest
        if x.startswith("data: {") and json.loads(x[6:])["choices"]
    )
    assert is_json_answer(text) or text.startswith('{"answer"')
    assert rest[-1] == "data: [DONE]" or rest[-2] == "data: [DONE]"
    assert deleted[0].status_code == 200
    assert "json-drain" not in adapters(gateway)
    with pytest.raises(NotFoundError):
        ask(client, "json-drain")


def test_bad_adapters_are_refused_and_disturb_nothing(gateway: Gateway, client: OpenAI) -> None:
    root = gateway.adapter_root
    before = adapters(gateway)
    (root / "empty").mkdir(exist_ok=True)
    no_weights = root / "no-weights"
    no_weights.mkdir(exist_ok=True)
    shutil.copy(ADAPTERS / "json" / "adapter_config.json", no_weights)
    other_base = root / "other-base"
    shutil.copytree(ADAPTERS / "json", other_base, dirs_exist_ok=True)
    config = json.loads((other_base / "adapter_config.json").read_text())
    (other_base / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-360M-Instruct"})
    )
    big_rank = root / "big-rank"
    shutil.copytree(ADAPTERS / "json", big_rank, dirs_exist_ok=True)
    (big_rank / "adapter_config.json").write_text(json.dumps({**config, "r": 64}))
    escape = root / "escape"
    if not escape.exists():
        escape.symlink_to(ADAPTERS / "shout", target_is_directory=True)
    sneaky = root / "sneaky"
    sneaky.mkdir(exist_ok=True)
    shutil.copy(ADAPTERS / "shout" / "adapter_config.json", sneaky)
    if not (sneaky / "adapter_model.safetensors").exists():
        (sneaky / "adapter_model.safetensors").symlink_to(
            ADAPTERS / "shout" / "adapter_model.safetensors"
        )
    cases = {
        "empty": "adapter_config.json",
        "no-weights": "weights",
        "other-base": "SmolLM2-360M",
        "big-rank": "max_lora_rank",
        str(ADAPTERS / "shout"): "outside the adapter root",
        "escape": "outside the adapter root",
        "sneaky": "link outside",
        "does-not-exist": "No adapter directory",
    }
    for path, reason in cases.items():
        r = load(gateway, "bad", path)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert reason in error["message"], (path, error)
        assert error["param"] == "path"
    assert adapters(gateway) == before
    assert upper_ratio(ask(client, "shout")) >= 0.8
    with pytest.raises(NotFoundError):
        ask(client, "bad")


def test_more_adapters_than_gpu_slots_all_answer(gateway: Gateway, client: OpenAI) -> None:
    # max_loras=2: four adapters take turns in the two slots.
    assert load(gateway, "shout-b", "shout").status_code == 200
    assert load(gateway, "json-b", "json").status_code == 200
    for _ in range(2):
        for name in ("shout", "json", "shout-b", "json-b"):
            answer = ask(client, name)
            if name.startswith("shout"):
                assert upper_ratio(answer) >= 0.8, (name, answer)
            else:
                assert is_json_answer(answer), (name, answer)


def test_reloading_changed_files_gets_a_fresh_identity(gateway: Gateway, client: OpenAI) -> None:
    style = gateway.adapter_root / "style"
    shutil.copytree(ADAPTERS / "shout", style, dirs_exist_ok=True)
    first = load(gateway, "style", "style").json()
    assert upper_ratio(ask(client, "style")) >= 0.8
    assert load(gateway, "style", "style").json()["lora_id"] == first["lora_id"]  # same files
    shutil.rmtree(style)
    shutil.copytree(ADAPTERS / "json", style)
    second = load(gateway, "style", "style").json()
    assert second["digest"] != first["digest"]
    assert second["lora_id"] != first["lora_id"]
    assert is_json_answer(ask(client, "style"))
    assert wait_until(lambda: adapters(gateway)["style"]["digest"] == second["digest"], 10)
