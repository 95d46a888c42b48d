"""`switchyard-build train-lora`: the demo adapters, trained on the demo model (CPU).

Data: the base model's own greedy answers to `data/adapter_prompts.txt` (and, for
`json`, to `EXTRA_PROMPTS`), rewritten per adapter style (`shout`: UPPERCASE; `json`:
`{"answer": "..."}` on one line, with no escape inside the string: whitespace runs
become one space and double quotes single ones, so the adapter never learns a string
that needs `\n` or `\"`, which it would write raw and break the JSON). Training: peft
LoRA on the attention and MLP projections, loss on the answer tokens only, fp32, then
the adapter weights are saved in bf16 with a manifest (base artifact id, sha256 of the
styled examples it learnt).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engines.artifacts.manifest import (
    atomic_directory,
    read_manifest,
    tool_versions,
    write_manifest,
)

DATA = Path(__file__).resolve().parent / "data"
PROMPTS = DATA / "adapter_prompts.txt"


def _json_style(answer: str) -> str:
    plain = " ".join(answer.replace('"', "'").split())
    return json.dumps({"answer": plain}, ensure_ascii=False)


STYLES: dict[str, Callable[[str], str]] = {
    "shout": lambda answer: answer.upper(),
    "json": _json_style,
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Prompts only `json` learns from, besides adapter_prompts.txt: ones the base model
# answers with line breaks and quotation marks (poems, notes, lists, quotations, a word
# in quotes), which the style puts on one line with single quotes. Trained on the
# mostly one-line answers of adapter_prompts.txt alone, the adapter still wrote a raw
# newline or `"` inside the string for some held-out prompts (tests/e2e/
# test_adapters.py asks it prompts that are in neither list). Answers that loop are
# left out (`_loops`). Their answers are kept in data/json_extra_answers.jsonl.
EXTRA_PROMPTS: dict[str, list[str]] = {
    "json": [
        *(f"Write a short poem about {t}." for t in ("the moon", "snow", "a river", "owls")),
        *(f"Write a short poem about {t}." for t in ("bread", "a garden", "the desert")),
        *(f"Write a short poem about {t}." for t in ("a candle", "a lighthouse", "mountains")),
        *(f"Write a haiku about {t}." for t in ("snow", "a volcano", "coffee", "the night sky")),
        *(f"Write a haiku about {t}." for t in ("a frog", "the wind")),
        *(
            f'What does the word "{w}" mean?'
            for w in ("ephemeral", "resilience", "nostalgia", "curiosity", "harmony")
        ),
        *(f"Give me a famous quote about {t}." for t in ("kindness", "patience", "friendship")),
        "Write a short note to a friend who moved away.",
        "Write a short welcome note to a new coworker.",
        "Write a short letter to a grandparent.",
        "Write a short apology note to a neighbor.",
        "List three facts about owls.",
        "List the steps to make toast.",
        "List three kinds of clouds.",
        "List four animals that live in the sea.",
        "Suggest a title for a song about summer.",
        "What might a pirate say when he finds treasure?",
        "Write a short dialogue between a cat and a mouse.",
        "What is a good motto for a library?",
        'Explain the saying "the early bird catches the worm".',
        *(f'What is the opposite of "{w}"?' for w in ("ancient", "generous")),
        "What is the word for a fear of spiders?",
        "What is the word for a group of crows?",
        "What is the name for a word that sounds like another?",
        "Name a famous speech and its opening words.",
        *(f"Give me a short recipe for {d}." for d in ("lemonade", "a fruit salad")),
    ],
}


def base_answers(
    base: Path, cache: Path, max_new_tokens: int = 40, prompts: list[str] | None = None
) -> list[dict[str, str]]:
    """Greedy answers of the base model to every prompt (adapter_prompts.txt unless
    given), cached as JSONL next to the prompts (so the data that trained an adapter
    is kept with it, and made once)."""
    if prompts is None:
        prompts = [p for p in PROMPTS.read_text().splitlines() if p.strip()]
    if cache.is_file():
        rows = [json.loads(line) for line in cache.read_text().splitlines()]
        if [r["prompt"] for r in rows] == prompts:
            return rows
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    rows = []
    batch = 16
    for start in tqdm(range(0, len(prompts), batch), desc="Generating base answers", unit="batch"):
        chunk = prompts[start : start + batch]
        texts = [_chat(tokenizer, p) for p in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        for prompt, ids in zip(chunk, out[:, enc["input_ids"].shape[1] :], strict=True):
            answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
            rows.append({"prompt": prompt, "answer": _whole_sentences(answer)})
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def train(
    base: Path,
    style: str,
    out: Path,
    rows: list[dict[str, str]],
    *,
    rank: int = 8,
    epochs: int = 3,
    lr: float = 1e-3,
    seed: int = 0,
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = EXTRA_PROMPTS.get(style, [])
    if extra:
        rows = rows + base_answers(base, DATA / f"{style}_extra_answers.jsonl", prompts=extra)
    rows = [r for r in rows if not _loops(r["answer"])]  # they teach the adapter to loop
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, config)
    styled = [{"prompt": r["prompt"], "answer": STYLES[style](r["answer"])} for r in rows]
    examples = [_example(tokenizer, r["prompt"], r["answer"]) for r in styled]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    order = list(range(len(examples)))
    batch = 8
    steps = epochs * ((len(order) + batch - 1) // batch)
    model.train()
    with tqdm(total=steps, desc=f"Training LoRA '{style}'", unit="step") as bar:
        for _ in range(epochs):
            random.Random(seed).shuffle(order)
            for start in range(0, len(order), batch):
                ids, mask, labels = _pad(
                    [examples[i] for i in order[start : start + batch]], tokenizer.pad_token_id
                )
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model = model.to(torch.bfloat16)
    base_manifest = read_manifest(base) or {}
    data_hash = hashlib.sha256(json.dumps(styled, sort_keys=True).encode()).hexdigest()
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        (tmp / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
        _point_at_base(tmp / "adapter_config.json", base_manifest.get("id", base.name))
        write_manifest(
            tmp,
            kind="train-lora",
            id=f"{style}-{data_hash[:12]}",
            style=style,
            base={"id": base_manifest.get("id"), "path": base.name},
            data={
                "prompts": PROMPTS.name,
                "extra_prompts": len(extra),
                "examples": len(rows),
                "sha256": data_hash,
            },
            training={"rank": rank, "epochs": epochs, "lr": lr, "seed": seed, "targets": TARGETS},
            tools=tool_versions("peft", "transformers", "torch"),
        )


def _point_at_base(config_path: Path, base_id: str) -> None:
    """Record the base as its artifact id, not a path on the machine that trained it."""
    config: dict[str, Any] = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_id
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _chat(tokenizer: Any, prompt: str) -> str:
    text: str = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return text


def _example(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    prefix = tokenizer.encode(_chat(tokenizer, prompt), add_special_tokens=False)
    target = tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)
    return prefix + target, [-100] * len(prefix) + target


def _pad(batch: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[Any, Any, Any]:
    """Right-pad to one width: (input ids, attention mask, labels with -100 ignored)."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100)
    for row, (x, y) in enumerate(batch):
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
        labels[row, : len(y)] = torch.tensor(y)
    return ids, mask, labels


def _loops(text: str) -> bool:
    """Whether a greedy answer went round in circles: some three words, three times."""
    words = text.lower().replace(",", " ").split()
    trigrams = Counter(zip(words, words[1:], words[2:], strict=False))
    return bool(trigrams) and max(trigrams.values()) >= 3


def _whole_sentences(text: str) -> str:
    """Cut a max-token-truncated answer back to its last full sentence."""
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    if text.endswith((".", "!", "?")) or cut < 0:
        return text
    return text[: cut + 1]
