"""Reward-tune a small language model with a yes/no judge: LFP against REINFORCE, same samples.

A Llama-style character model is first trained on Python's help topics (as in
``examples/language_model.py``, with AdamW). Then, at every tuning step, it continues a batch of
prompts (windows of the training text) by sampling ``--new`` characters, and a judge a person could
apply says yes or no to each continuation: by default, *yes when the continuation contains no
letter "e"* (about one in five does at the start). The judge is a rule, not a differentiable
function.

Both methods start from the same weights, see the same prompts in the same order, draw the same
number of samples per step (on-policy, from their own current model, with the same random
stream), ask the same judge and step AdamW with the same learning rate. With the advantage
\\(A_b = \\text{yes}_b - \\overline{\\text{yes}}\\) of each sequence (the batch mean as baseline):

- REINFORCE minimises \\(-\\sum_b A_b \\sum_t \\log p(c_{b,t})\\) over the sampled characters
  \\(c_{b,t}\\).
- LFP places the reward on the logits of the generated positions,
  \\(R_{b,t} = A_b \\, y_{b,t} \\odot (\\text{onehot}(c_{b,t}) - \\operatorname{softmax}(y_{b,t}))\\)
  (``SoftmaxLossReward`` with the sampled characters as targets, -100 on the prompt, times
  \\(A_b\\)), and propagates it with the ``llm`` rules.

    python examples/reward_tuning.py                 # 300 pre-training steps, then 100 tuning steps per method
    python examples/reward_tuning.py --smoke         # a few steps: checks that everything runs
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from language_model import Corpus, batches, build, validation_loss
from torch import nn

from lfpoptim import LFPOptimizer, SoftmaxLossReward
from lfpoptim.rewards import IGNORE_INDEX

Judge = Callable[[str], bool]


def no_letter_e(continuation: str) -> bool:
    """The judge: yes when the continuation contains no letter "e" (either case)."""
    return "e" not in continuation.lower()


@torch.no_grad()
def sample(model: nn.Module, prompts: torch.Tensor, new: int, generator: torch.Generator) -> torch.Tensor:
    """Prompts followed by ``new`` characters sampled at temperature 1, shaped ``(batch, prompt + new)``."""
    model.eval()
    sequences = prompts
    for _ in range(new):
        logits = model(input_ids=sequences).logits[:, -1].float()
        next_ids = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
        sequences = torch.cat([sequences, next_ids], dim=1)
    model.train()
    return sequences


def verdicts(corpus: Corpus, sequences: torch.Tensor, prompt: int, judge: Judge) -> torch.Tensor:
    """1.0 where the judge says yes to a sequence's continuation, else 0.0."""
    return torch.tensor([float(judge(corpus.decode(row[prompt:]))) for row in sequences])


def inputs_and_targets(sequences: torch.Tensor, prompt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model reads all but the last character; targets are the sampled characters, -100 on the prompt."""
    inputs, targets = sequences[:, :-1], sequences[:, 1:].clone()
    targets[:, : prompt - 1] = IGNORE_INDEX
    return inputs, targets


class AdvantageReward:
    r"""\(R = A_b \, y \odot (\text{onehot}(c) - \operatorname{softmax}(y))\) on the generated positions.

    Attributes:
        advantages: one advantage per sequence, set before each step.
    """

    def __init__(self) -> None:
        self.advantages = torch.zeros(0)
        self.softmax_reward = SoftmaxLossReward()

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.softmax_reward(outputs, targets) * self.advantages.to(outputs)[:, None, None]


@dataclass
class Tuning:
    """One method's tuning run: the yes rate of each step's samples, the held-out yes rate, the cost."""

    yes_per_step: list[float] = field(default_factory=list)
    final_yes: float = 0.0
    validation_before: float = 0.0
    validation_after: float = 0.0
    seconds_per_update: float = 0.0


def held_out_yes_rate(model: nn.Module, corpus: Corpus, prompts: torch.Tensor, new: int, judge: Judge) -> float:
    sequences = sample(model, prompts, new, torch.Generator().manual_seed(12345))
    return float(verdicts(corpus, sequences, prompts.shape[1], judge).mean())


def tune(
    model: nn.Module, method: str, corpus: Corpus, settings: argparse.Namespace, judge: Judge = no_letter_e
) -> Tuning:
    """Tune ``model`` in place with ``"lfp"`` or ``"reinforce"``; prompts and random stream follow the seed."""
    result = Tuning()
    validation_data = batches(corpus.validation, 4, settings.batch, settings.length, seed=1)
    held_out = batches(corpus.validation, 1, settings.held_out, settings.prompt, seed=2)[0][0]
    result.validation_before = validation_loss(model, validation_data)
    reward = AdvantageReward()
    if method == "lfp":
        optimizer = LFPOptimizer(model, reward, base=torch.optim.AdamW, lr=settings.lr, strict=True)
    else:
        adamw = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    prompts = batches(corpus.train, settings.steps, settings.samples, settings.prompt, seed=settings.seed + 100)
    generator = torch.Generator().manual_seed(settings.seed)
    elapsed = 0.0
    for step, (prompt, _) in enumerate(prompts, start=1):
        sequences = sample(model, prompt, settings.new, generator)
        yes = verdicts(corpus, sequences, settings.prompt, judge)
        result.yes_per_step.append(float(yes.mean()))
        advantages = yes - yes.mean()
        inputs, targets = inputs_and_targets(sequences, settings.prompt)
        began = time.perf_counter()
        if method == "lfp":
            reward.advantages = advantages
            optimizer.step({"input_ids": inputs}, targets)
        else:
            adamw.zero_grad()
            logits = model(input_ids=inputs).logits
            log_likelihood = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # 0 where ignored
            (-(advantages[:, None] * log_likelihood).sum() / len(inputs)).backward()
            adamw.step()
        elapsed += time.perf_counter() - began
        if step % settings.every == 0:
            window = result.yes_per_step[-settings.every :]
            rate = sum(window) / len(window)
            print(f"  {method:9s} step {step:4d}  yes rate of the last {len(window)} steps {rate:.3f}")
    result.seconds_per_update = elapsed / len(prompts)
    result.final_yes = held_out_yes_rate(model, corpus, held_out, settings.new, judge)
    result.validation_after = validation_loss(model, validation_data)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=100, help="tuning steps per method")
    parser.add_argument("--samples", type=int, default=32, help="sampled continuations per step")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length (characters)")
    parser.add_argument("--new", type=int, default=16, help="characters sampled per continuation")
    parser.add_argument("--held-out", type=int, default=256, help="held-out prompts for the final yes rate")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4, help="tuning learning rate (AdamW, both methods)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.pretrain_steps, args.steps, args.samples, args.held_out, args.every = 4, 4, 8, 8, 2
        args.batch, args.length, args.width, args.prompt, args.new = 4, 16, 16, 8, 4
    torch.set_num_threads(args.threads)

    corpus = Corpus.load()
    model = build("llama", vocabulary=len(corpus.alphabet), width=args.width, layers=args.layers,
                  length=args.length + args.new, seed=args.seed)  # fmt: skip
    adamw = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for x, t in batches(corpus.train, args.pretrain_steps, args.batch, args.length, seed=args.seed):
        adamw.zero_grad()
        F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), t.flatten()).backward()
        adamw.step()
    start = {name: value.clone() for name, value in model.state_dict().items()}
    print(f"pre-trained {args.pretrain_steps} steps with AdamW; judge: no letter 'e' in {args.new} sampled characters")

    results = {}
    for method in ("reinforce", "lfp"):
        model.load_state_dict(start)
        results[method] = tune(model, method, corpus, args)
    print(f"\nafter {args.steps} steps of {args.samples} samples (yes rate on {args.held_out} held-out prompts)")
    for method, run in results.items():
        print(
            f"{method:9s} yes rate {run.yes_per_step[0]:.3f} (first step) -> {run.final_yes:.3f} (held out)  "
            f"validation cross-entropy {run.validation_before:.3f} -> {run.validation_after:.3f}  "
            f"update {run.seconds_per_update * 1e3:.0f} ms"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "settings": {k: str(v) for k, v in vars(args).items()},
            "runs": {m: asdict(r) for m, r in results.items()},
        }
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
