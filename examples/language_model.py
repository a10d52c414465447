"""Pre-train small Hugging Face language models with LFP and with AdamW, on the same batches.

The corpus is the text of Python's own help topics (``pydoc_data.topics``, about 465,000
characters of English documentation), which ships with every CPython: nothing is downloaded. The
models read characters (a vocabulary of about 100 symbols) and are built from their configs, never
from pretrained weights: a GPT-2-style model (learned positions, LayerNorm, ``gelu_new``,
``Conv1D``, tied embeddings) and a Llama-style one (rotary positions, RMSNorm, SwiGLU,
grouped-query attention).

For each model both runs start from the same weights and see the same batches in the same order
with the same learning rate, without dropout: AdamW on the cross-entropy, and ``LFPOptimizer(model,
SoftmaxLossReward(), base=torch.optim.AdamW)``, which takes the tokenizer-style batch
``{"input_ids": ...}`` and the next-token targets as they are (``preset="auto"`` chooses ``llm``;
``strict=True`` checks that every operation has a rule). Parameters the configs initialise to
zero (biases, LayerNorm shifts) are given a small magnitude by ``LFPOptimizer`` when it is built,
as for any model (``zero_parameters="fill"``, the default); AdamW starts them at zero.

    python examples/language_model.py                    # both models, 300 steps each (a few minutes per model)
    python examples/language_model.py --model llama --steps 1000 --width 128
    python examples/language_model.py --smoke            # a few steps: checks that everything runs
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from pydoc_data.topics import topics

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lfpoptim import LFPOptimizer, SoftmaxLossReward

VALIDATION_FRACTION = 0.1
EVALUATION_BATCHES = 8


@dataclass(frozen=True)
class Corpus:
    """The help topics as character ids, split into a training and a validation part (the last 10%)."""

    train: torch.Tensor
    validation: torch.Tensor
    alphabet: str

    @classmethod
    def load(cls) -> Corpus:
        text = "\n".join(topics[name] for name in sorted(topics))
        alphabet = "".join(sorted(set(text)))
        index = {char: i for i, char in enumerate(alphabet)}
        ids = torch.tensor([index[char] for char in text], dtype=torch.long)
        split = int(len(ids) * (1 - VALIDATION_FRACTION))
        return cls(ids[:split], ids[split:], alphabet)

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.alphabet[int(i)] for i in ids)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.alphabet.index(char) for char in text], dtype=torch.long)


def batches(
    ids: torch.Tensor, count: int, batch: int, length: int, seed: int, *, device: torch.device | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of random windows: inputs ``(batch, length)`` and the next characters as targets."""
    generator = torch.Generator().manual_seed(seed)
    result = []
    for _ in range(count):
        starts = torch.randint(0, len(ids) - length - 1, (batch,), generator=generator)
        windows = torch.stack([ids[start : start + length + 1] for start in starts.tolist()])
        result.append((windows[:, :-1].to(device), windows[:, 1:].to(device)))
    return result


def build(family: str, *, vocabulary: int, width: int, layers: int, length: int, seed: int) -> nn.Module:
    """A GPT-2-style or Llama-style causal LM from its config."""
    torch.manual_seed(seed)
    if family == "gpt2":
        config = GPT2Config(
            vocab_size=vocabulary, n_positions=length, n_embd=width, n_layer=layers, n_head=4, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        model: nn.Module = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=vocabulary, hidden_size=width, intermediate_size=width * 8 // 3, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=length, tie_word_embeddings=True,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
    return model


@torch.no_grad()
def validation_loss(model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean next-character cross-entropy (nats) over the validation batches."""
    model.eval()
    losses = [float(F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), t.flatten())) for x, t in data]
    model.train()
    return sum(losses) / len(losses)


@dataclass
class Run:
    """One optimizer's curve: validation cross-entropy at the evaluated steps, and seconds per step."""

    steps: list[int] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    seconds_per_step: float = 0.0


def train(
    model: nn.Module,
    method: str,
    train_data: list[tuple[torch.Tensor, torch.Tensor]],
    validation_data: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    lr: float,
    every: int,
) -> Run:
    """Train ``model`` in place with ``"lfp"`` or ``"adamw"``; evaluate every ``every`` steps."""
    run = Run()
    if method == "lfp":
        optimizer = LFPOptimizer(model, SoftmaxLossReward(), base=torch.optim.AdamW, lr=lr, strict=True)
        print(f"  LFP preset {optimizer.preset.name!r} (ε = {optimizer.epsilon:g})")
    else:
        adamw = torch.optim.AdamW(model.parameters(), lr=lr)
    elapsed = 0.0
    for step, (x, t) in enumerate(train_data, start=1):
        began = time.perf_counter()
        if method == "lfp":
            optimizer.step({"input_ids": x}, t)
        else:
            adamw.zero_grad()
            F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), t.flatten()).backward()
            adamw.step()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        elapsed += time.perf_counter() - began
        if step % every == 0 or step == len(train_data):
            run.steps.append(step)
            run.validation.append(validation_loss(model, validation_data))
            print(f"  {method:5s} step {step:5d}  validation cross-entropy {run.validation[-1]:.3f}")
    run.seconds_per_step = elapsed / len(train_data)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["gpt2", "llama", "both"], default="both")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=50, help="evaluate every this many steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", type=Path, help="write the curves here")
    parser.add_argument("--plot", type=Path, help="write a plot of the curves here")
    parser.add_argument("--smoke", action="store_true", help="a few small steps: checks that everything runs")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.batch, args.length, args.width, args.every = 6, 4, 16, 16, 3
    torch.set_num_threads(args.threads)

    corpus = Corpus.load()
    print(f"corpus: Python's help topics, {len(corpus.train) + len(corpus.validation)} characters, "
          f"vocabulary {len(corpus.alphabet)}")  # fmt: skip
    device = torch.device(args.device)
    train_data = batches(corpus.train, args.steps, args.batch, args.length, seed=args.seed, device=device)
    evaluation_batches = 2 if args.smoke else EVALUATION_BATCHES
    validation_data = batches(corpus.validation, evaluation_batches, args.batch, args.length, seed=1, device=device)
    families = ["gpt2", "llama"] if args.model == "both" else [args.model]
    results: dict[str, dict[str, Run]] = {}
    for family in families:
        results[family] = {}
        sizes = {"width": args.width, "layers": args.layers, "length": args.length, "seed": args.seed}
        for method in ("adamw", "lfp"):
            model = build(family, vocabulary=len(corpus.alphabet), **sizes).to(device)  # the same start for both
            params = sum(p.numel() for p in model.parameters())
            print(f"{family} ({params / 1e3:.0f}k parameters), {method}")
            results[family][method] = train(model, method, train_data, validation_data, lr=args.lr, every=args.every)

    print(f"\nvalidation cross-entropy after {args.steps} steps (batch {args.batch} x {args.length} characters)")
    tokens = args.batch * args.length
    for family, runs in results.items():
        adamw, lfp = runs["adamw"], runs["lfp"]
        ratio = lfp.validation[-1] / adamw.validation[-1]
        print(
            f"{family:6s} AdamW {adamw.validation[-1]:.3f}  LFP {lfp.validation[-1]:.3f}  ratio {ratio:.3f}  "
            f"step time AdamW {adamw.seconds_per_step * 1e3:.0f} ms  LFP {lfp.seconds_per_step * 1e3:.0f} ms  "
            f"tokens/s AdamW {tokens / adamw.seconds_per_step:.0f}  LFP {tokens / lfp.seconds_per_step:.0f}"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        curves = {family: {m: asdict(run) for m, run in runs.items()} for family, runs in results.items()}
        args.json.write_text(
            json.dumps({"settings": vars(args) | {"json": None, "plot": None}, "runs": curves}, indent=1)
        )
    if args.plot is not None:
        plot(results, args.plot)


def plot(results: dict[str, dict[str, Run]], path: Path) -> None:
    """Validation cross-entropy against steps, one panel per model."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.5), squeeze=False)
    for axis, (family, runs) in zip(axes[0], results.items(), strict=True):
        for method, run in runs.items():
            axis.plot(run.steps, run.validation, marker="o", label="LFP + AdamW" if method == "lfp" else "AdamW")
        axis.set(title=family, xlabel="step", ylabel="validation cross-entropy (nats)")
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
