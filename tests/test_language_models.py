"""Hugging Face language models: keyword inputs, ``ModelOutput`` logits, token rewards, ``preset="auto"``."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lfpoptim import LFPOptimizer, rewards
from lfpoptim.presets import select_preset

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.filterwarnings("ignore::lfpoptim.analysis.ZeroParameterWarning")  # biases start at 0

VOCABULARY = 30


def gpt2(**config: object) -> nn.Module:
    torch.manual_seed(0)
    settings = {"vocab_size": VOCABULARY, "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 16, **config}
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**settings)).eval()  # no dropout


def llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCABULARY,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
    )
    return transformers.LlamaForCausalLM(config).eval()


class LogitsOf(nn.Module):
    """``model(input_ids=x).logits``: the hand-written wrapper Mapping inputs make unnecessary."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


def tokens(batch: int = 3, length: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCABULARY, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("build", [gpt2, llama])
def test_step_takes_keyword_inputs_and_rewards_the_logits(build) -> None:
    model = build()
    x = tokens()
    optimizer = LFPOptimizer(model, rewards.SoftmaxLossReward(), base=torch.optim.AdamW, lr=1e-3, strict=True)
    before = [p.detach().clone() for p in model.parameters()]
    result = optimizer.step({"input_ids": x, "attention_mask": torch.ones_like(x)}, x.roll(-1, dims=1))
    assert result.outputs.shape == (3, 6, VOCABULARY)
    assert optimizer.preset is not None
    assert optimizer.preset.name == "llm"
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_feedback_of_keyword_inputs_is_that_of_a_wrapped_model() -> None:
    model = gpt2()
    x, targets = tokens(), tokens(seed=1)
    direct = LFPOptimizer(model, rewards.SoftmaxLossReward(), preset="llm").feedback({"input_ids": x}, targets)
    wrapped = LFPOptimizer(LogitsOf(model), rewards.SoftmaxLossReward(), preset="llm").feedback(x, targets)
    for name, feedback in direct.items():
        torch.testing.assert_close(feedback, wrapped[f"model.{name}"])


def test_labels_in_the_inputs_do_not_change_the_feedback() -> None:
    model = gpt2()
    x, targets = tokens(), tokens(seed=1)
    optimizer = LFPOptimizer(model, rewards.SoftmaxLossReward())
    without = optimizer.feedback({"input_ids": x}, targets)
    with_labels = optimizer.feedback({"input_ids": x, "labels": x}, targets)
    for name, feedback in without.items():
        torch.testing.assert_close(with_labels[name], feedback)


def test_outputs_without_logits_are_refused_with_what_to_do() -> None:
    model = gpt2()
    optimizer = LFPOptimizer(model, rewards.SoftmaxLossReward())
    with pytest.raises(
        TypeError, match=r"returned tuple; LFP needs a single output tensor, or an output with a `\.logits`"
    ):
        optimizer.step({"input_ids": tokens(), "return_dict": False}, tokens())


def test_ignored_tokens_change_nothing() -> None:
    """Padding labelled -100 gets no reward: the feedback is that of the unpadded batch."""
    model = gpt2()
    x, targets = tokens(batch=1, length=8), tokens(batch=1, length=8, seed=1)
    optimizer = LFPOptimizer(model, rewards.SoftmaxLossReward(), feedback_reduction="sum")
    short = optimizer.feedback({"input_ids": x[:, :5]}, targets[:, :5])
    padded_targets = targets.clone()
    padded_targets[:, 5:] = rewards.IGNORE_INDEX
    padded = optimizer.feedback({"input_ids": x}, padded_targets)  # causal: later tokens never reach earlier ones
    for name, feedback in short.items():
        torch.testing.assert_close(padded[name], feedback, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize(
    "reward",
    [
        rewards.SoftmaxLossReward(),
        rewards.SigmoidLossReward(),
        rewards.BoundedSoftmaxReward(0.1, 0.9),
        rewards.CorrectClassificationReward(),
        rewards.MisclassificationReward(),
    ],
    ids=lambda reward: type(reward).__name__,
)
def test_token_rewards_are_the_per_token_rewards_with_ignored_tokens_at_zero(reward) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4)
    targets = torch.randint(0, 4, (2, 5))
    targets[0, 0] = targets[1, 3] = -100
    targets[1, 4] = int(logits[1, 4].argmax())  # a correct token, for the correct-classification reward
    flat = reward(logits.reshape(-1, 4), targets.reshape(-1).clamp_min(0)).reshape(2, 5, 4)
    expected = flat * (targets != -100).unsqueeze(-1)
    actual = reward(logits, targets)
    torch.testing.assert_close(actual, expected)
    assert actual[0, 0].abs().sum() == 0
    assert actual[1, 3].abs().sum() == 0


def test_softmax_reward_is_minus_the_cross_entropy_gradient_per_token() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    targets = torch.randint(0, 7, (2, 5))
    targets[1, 2] = -100
    F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum").backward()
    torch.testing.assert_close(rewards.SoftmaxLossReward()(logits.detach(), targets), -logits.detach() * logits.grad)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (
            torch.zeros(2, 4, dtype=torch.long),
            r"expects class indices shaped \(2, 5\) for outputs of shape \(2, 5, 7\)",
        ),
        (torch.full((2, 5), 7), "target class index 7 is out of range for outputs with 7 classes"),
        (torch.full((2, 5), -1), "target class index -1 is out of range"),
    ],
)
def test_bad_token_targets_are_named(targets, message) -> None:
    with pytest.raises(ValueError, match=message):
        rewards.CorrectClassificationReward()(torch.zeros(2, 5, 7), targets)


@pytest.mark.parametrize("build", [gpt2, llama])
def test_auto_chooses_the_llm_preset_for_causal_language_models(build) -> None:
    assert select_preset(build()).name == "llm"


def test_language_model_example_smoke_prints_both_models() -> None:
    from script_runner import run_in_process

    stdout = run_in_process("examples/language_model.py", "--smoke")
    for family in ("gpt2", "llama"):
        row = re.search(rf"^{family}\s+AdamW (\d\.\d+)\s+LFP (\d\.\d+)\s+ratio", stdout, flags=re.MULTILINE)
        assert row is not None, stdout
        # six small steps from a uniform start (ln 103 = 4.63 nats) already lower both losses
        assert all(float(value) < 4.6 for value in row.groups())
    assert "LFP preset 'llm'" in stdout


def test_reward_tuning_example_smoke_prints_both_methods() -> None:
    from script_runner import run_in_process

    stdout = run_in_process("examples/reward_tuning.py", "--smoke")
    for method in ("reinforce", "lfp"):
        assert re.search(
            rf"^{method}\s+yes rate \d\.\d+ \(first step\) -> \d\.\d+ \(held out\)", stdout, re.MULTILINE
        ), stdout


def test_auto_leaves_torch_transformer_layers_to_the_attention_preset() -> None:
    assert select_preset(nn.TransformerDecoderLayer(8, 2)).name == "vit"


def test_dropin_attaches_module_rules_so_strict_raises_nothing() -> None:
    """Under ``llm`` RMSNorm is a module rule; without it its ``rsqrt`` would be uncovered (strict raises)."""
    from lfpoptim import DropInLFPOptimizer

    model = nn.Sequential(LogitsOf(llama()), nn.Flatten(0, 1))  # logits (tokens, vocabulary), as a classifier's
    x = tokens()
    with DropInLFPOptimizer(model, base=torch.optim.AdamW, lr=1e-3, strict=True, preset="llm") as optimizer:
        optimizer.zero_grad()
        F.cross_entropy(model(x), x.flatten()).backward()
        optimizer.step()
    norm = model[0].model.model.layers[0].input_layernorm
    assert "forward" not in vars(norm)  # the module rule is detached after the forward
