"""How close an artifact is to its source, on a fixed prompt set (`data/eval_prompts.txt`).

The source (for a merge: the base with its adapters applied unmerged, by peft)
answers every prompt greedily; the artifact is then scored on those same tokens:
- `token_agreement`: how often the artifact's top-1 next token is the source's
  (teacher-forced over every answer token);
- `exact_match`: how many prompts the artifact answers greedily with the same tokens;
- `perplexity` of the artifact on the source's answers, next to the source's own, and
  `perplexity_delta_pct` between the two: a perplexity-style measure of drift.
Both models run in fp32, so the numbers measure the artifact's change, not the dtype.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

PROMPTS = Path(__file__).resolve().parent / "data" / "eval_prompts.txt"
ANSWER_TOKENS = 32


def prompts() -> list[str]:
    return [line for line in PROMPTS.read_text().splitlines() if line.strip()]


def load(path: Path, adapters: Sequence[Path] = ()) -> Any:
    """A model directory (quantized ones are decompressed) in fp32, with `adapters`
    applied by peft (not merged), for evaluation on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if adapters:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapters[0], adapter_name="a0")
        for i, adapter in enumerate(adapters[1:], 1):
            model.load_adapter(adapter, adapter_name=f"a{i}")
        model.base_model.set_adapter([f"a{i}" for i in range(len(adapters))])
    return model.eval()


def compare(artifact: Any, source: Any, tokenizer: Any, label: str = "") -> dict[str, Any]:
    import torch

    asked = prompts()
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in asked
    ]
    answers = _greedy(source, texts, tokenizer)
    exact = sum(a == b for a, b in zip(_greedy(artifact, texts, tokenizer), answers, strict=True))
    agree = tokens = 0
    nll_source = nll_artifact = 0.0
    pairs = zip(texts, answers, strict=True)
    for text, answer in tqdm(list(pairs), desc=f"Scoring {label}".strip(), unit="prompt"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        full = torch.tensor([ids + answer])
        target = torch.tensor(answer)
        start = len(ids) - 1  # logits at position i predict token i + 1
        with torch.no_grad():
            theirs = source(full).logits[0, start:-1].float()
            ours = artifact(full).logits[0, start:-1].float()
        nll_source += torch.nn.functional.cross_entropy(theirs, target, reduction="sum").item()
        nll_artifact += torch.nn.functional.cross_entropy(ours, target, reduction="sum").item()
        agree += int((ours.argmax(-1) == target).sum())
        tokens += len(answer)
    ppl_source, ppl = math.exp(nll_source / tokens), math.exp(nll_artifact / tokens)
    return {
        "prompts": len(asked),
        "prompts_sha256": hashlib.sha256(PROMPTS.read_bytes()).hexdigest(),
        "answer_tokens": tokens,
        "token_agreement": round(agree / tokens, 4),
        "exact_match": round(exact / len(asked), 4),
        "perplexity_source": round(ppl_source, 4),
        "perplexity": round(ppl, 4),
        "perplexity_delta_pct": round(100 * (ppl / ppl_source - 1), 2),
    }


def _greedy(model: Any, texts: list[str], tokenizer: Any) -> list[list[int]]:
    """Greedy answers to all prompts in one left-padded batch, each cut after its end
    token."""
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=ANSWER_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answers = []
    for row in out[:, batch["input_ids"].shape[1] :].tolist():
        end = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        answers.append(row[:end])
    return answers


def verify(directory: Path, source: Path | None = None) -> dict[str, Any]:
    """Check an artifact's files against its manifest, then compare it with its source
    again; returns {"recorded": ..., "measured": ...}."""
    from transformers import AutoTokenizer

    from engines.artifacts.manifest import ArtifactError, source_record
    from engines.artifacts.manifest import verify as verify_checksums

    manifest = verify_checksums(directory)
    recorded = manifest.get("source")
    if not recorded:
        return {"recorded": None, "measured": None}  # imported, not derived: nothing to compare
    source = source or Path(recorded["path"])
    if not source.is_dir():
        raise ArtifactError(f"the source {source} is not here; pass --source DIR.")
    if source_record(source)["weights"] != recorded["weights"]:
        raise ArtifactError(
            f"{source}'s weights differ from those {directory.name} was built from."
        )
    adapters = [Path(a["path"]) for a in manifest.get("adapters", [])]
    measured = compare(
        load(directory),
        load(source, adapters),
        AutoTokenizer.from_pretrained(source),
        directory.name,
    )
    return {"recorded": manifest.get("eval"), "measured": measured}
