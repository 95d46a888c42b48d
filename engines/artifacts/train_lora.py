"""`switchyard-build train-lora`: the demo adapters, trained on the demo model (CPU).

Data: the base model's own greedy answers to `data/adapter_prompts.txt`, rewritten per
adapter style (`shout`: UPPERCASE; `json`: `{"answer": "..."}`). Training: peft LoRA on
the attention and MLP projections, loss on the answer tokens only, fp32, then the
adapter weights are saved in bf16 with a manifest (base artifact id, data sha256).
"""

from __future__ import annotations

import hashlib
import json
import random
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

STYLES: dict[str, Callable[[str], str]] = {
    "shout": lambda answer: answer.upper(),
    "json": lambda answer: json.dumps({"answer": answer}),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def base_answers(base: Path, cache: Path, max_new_tokens: int = 40) -> list[dict[str, str]]:
    """Greedy answers of the base model to every prompt, cached as JSONL next to the
    prompts (so the data that trained an adapter is kept with it)."""
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

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, config)
    examples = [_example(tokenizer, r["prompt"], STYLES[style](r["answer"])) for r in rows]
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
    data_hash = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
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
            data={"prompts": PROMPTS.name, "examples": len(rows), "sha256": data_hash},
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


def _whole_sentences(text: str) -> str:
    """Cut a max-token-truncated answer back to its last full sentence."""
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
    if text.endswith((".", "!", "?")) or cut < 0:
        return text
    return text[: cut + 1]
