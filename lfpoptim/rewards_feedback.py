r"""Rewards from discrete feedback: a yes/no, a rating, a preference between two answers.

A judge (a person, another model, a test suite, any non-differentiable metric) looks at the answer
the model chose for each sample and says how good it was; it never has to name the right answer.
These adapters turn such a judgement into a reward shaped like the outputs
``(batch, classes)``, with the call shape of a torch loss, ``reward(outputs, targets)``.

**The form of the reward.** LFP's backward pass starts from \(R / y\) at each output unit (see
`lfpoptim.rewards`). With \(a\) the chosen answer, \(p = \operatorname{softmax}(y)\) and
\(A\) a per-sample advantage (the score, minus a baseline if one is kept), the reward is

\[
R = A \, y \odot (e_a - p), \qquad \frac{R}{y} = A \, (e_a - p) = A \, \nabla_y \log p_a,
\]

so the seed is the policy gradient (REINFORCE) of the chosen answer: after a positive score the
answer's logit rises against all the others, after a negative one it falls and the others rise,
and how far depends on the model's confidence, not on how close the logits are to zero. On a ReLU
network LFP with this reward is weight-scaled REINFORCE (as it is weight-scaled gradient descent
with `lfpoptim.rewards.SoftmaxLossReward`). A score of 0 means *no opinion*: that sample's reward
is 0 and it sends no feedback, so a batch may be judged only in part.

**Choosing the answer.** By default the answer judged is the model's best guess (the argmax).
``choice="sample"`` draws it from \(p\) and ``choice="epsilon-greedy"`` takes a uniformly random
class with probability ``epsilon``: bandit-style exploration, so that a model can find the right
answer by trying it. Pass a ``torch.Generator`` to make the draws reproducible.

The reference implementation's sign-based rewards (`lfpoptim.rewards.CorrectClassificationReward`,
`lfpoptim.rewards.MisclassificationReward`) seed the backward pass with \(\pm 1 / |y|\) instead;
see their docstrings for what they are for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

__all__ = ["Choice", "PreferenceReward", "RatingReward", "ScoreReward", "choose", "exploration_weight", "policy_reward"]

Choice = Literal["argmax", "sample", "epsilon-greedy"]
"""How an adapter picks the answer that is judged: the best guess, a draw from the softmax, or ε-greedy."""

Scores = torch.Tensor | Sequence[float]


def _check_logits(outputs: torch.Tensor, reward: str) -> None:
    if outputs.dim() != 2:
        raise ValueError(
            f"{reward} expects outputs shaped (batch, classes), got shape {tuple(outputs.shape)}; "
            "flatten extra dimensions into the batch first"
        )


def _per_sample(values: Scores, outputs: torch.Tensor, what: str) -> torch.Tensor:
    """The judge's answer as a tensor shaped ``(batch,)`` in the outputs' dtype and on their device."""
    values = torch.as_tensor(values, dtype=outputs.dtype, device=outputs.device)
    if values.shape != (outputs.shape[0],):
        raise ValueError(
            f"{what} returned shape {tuple(values.shape)} but must give one value per sample, "
            f"shape ({outputs.shape[0]},)"
        )
    return values


def choose(
    outputs: torch.Tensor, choice: Choice = "argmax", epsilon: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The answer of each sample: class indices shaped ``(batch,)``.

    Args:
        outputs: the logits, shaped ``(batch, classes)``.
        choice: ``"argmax"`` the best guess; ``"sample"`` a draw from ``softmax(outputs)``;
            ``"epsilon-greedy"`` the best guess, or with probability ``epsilon`` a class drawn
            uniformly.
        epsilon: the probability of a random class for ``"epsilon-greedy"``.
        generator: draws the random choices (on the outputs' device); torch's global generator when ``None``.
    """
    best = outputs.argmax(dim=1)
    if choice == "argmax":
        return best
    if choice == "sample":
        return torch.multinomial(outputs.softmax(dim=1), 1, generator=generator).squeeze(1)
    explore = torch.rand(best.shape, generator=generator, device=outputs.device) < epsilon
    random = torch.randint(outputs.shape[1], best.shape, generator=generator, device=outputs.device)
    return torch.where(explore, random, best)


def exploration_weight(outputs: torch.Tensor, choices: torch.Tensor, epsilon: float) -> torch.Tensor:
    r"""The clipped importance weight \(\min(1, p_a / \mu_a)\) of ε-greedy answers, shaped ``(batch,)``.

    \(\mu_a = \varepsilon / K + (1 - \varepsilon) [a = \arg\max y]\) is the probability that ε-greedy
    picks \(a\) among \(K\) classes, \(p_a\) the softmax's. Without it, every random answer the
    judge rejects pushes an already unlikely class further down by about the full step, however
    unlikely it is; the logits then grow without bound (LFP's weight-scaled updates overflow within
    a few epochs on the digits MLP). With it, an update counts as much as the softmax policy would
    have chosen that answer, at most fully (truncated importance sampling).

    Args:
        outputs: the logits, shaped ``(batch, classes)``.
        choices: the ε-greedy answers, class indices shaped ``(batch,)``.
        epsilon: the exploration probability they were drawn with.
    """
    classes = outputs.shape[1]
    chosen = outputs.softmax(dim=1).gather(1, choices[:, None]).squeeze(1)
    greedy = choices == outputs.argmax(dim=1)
    behaviour = torch.where(greedy, 1.0 - epsilon + epsilon / classes, epsilon / classes)
    return (chosen / behaviour).clamp_(max=1.0)


def policy_reward(outputs: torch.Tensor, choices: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    r"""\(R = A \, y \odot (e_a - \operatorname{softmax}(y))\): the seed \(R / y\) is \(A \, \nabla_y \log p_a\).

    Args:
        outputs: the logits \(y\), shaped ``(batch, classes)``.
        choices: the chosen answers \(a\), class indices shaped ``(batch,)``.
        advantages: \(A\), one number per sample, shaped ``(batch,)``; 0 gives the sample no reward.
    """
    direction = F.one_hot(choices, outputs.shape[1]).to(outputs.dtype).sub_(outputs.softmax(dim=1))
    return direction.mul_(outputs).mul_(advantages[:, None])


class ScoreReward:
    r"""Learn from one black-box score per sample: a yes/no, a metric, any number; 0 means no opinion.

    For each sample the reward picks an answer \(a\) (see ``choice``), asks
    ``score_fn(shown, targets)`` for one score per sample and returns
    \(R = A \, y \odot (e_a - \operatorname{softmax}(y))\) (`policy_reward`) with advantage
    \(A\) = the score (minus the baseline, if kept): LFP's seed is then the policy gradient
    \(A \, \nabla_y \log p_a\). A positive score makes the answer more likely, a negative one
    less likely; samples scored 0 get no reward.

    **What the judge sees.** ``shown`` is a tensor shaped like the outputs whose argmax along
    dimension 1 is the answer to judge: with ``choice="argmax"`` it is the outputs themselves; when
    the answer is explored (``"sample"``, ``"epsilon-greedy"``) it is the one-hot encoding of the
    chosen answers. A judge written as ``shown.argmax(dim=1) == ...`` works for every choice.
    ``targets`` is passed through untouched: whatever the judge needs (labels for a simulated
    judge, the inputs or their ids for a person who looks at them).

    Args:
        score_fn: ``score_fn(shown, targets)`` -> one score per sample, shaped ``(batch,)``
            (tensor, array or list): +1/-1 for yes/no, 0 for no opinion.
        choice: which answer is judged: ``"argmax"`` (the best guess), ``"sample"`` (drawn from
            the softmax) or ``"epsilon-greedy"``.
        epsilon: the probability of a uniformly random answer for ``"epsilon-greedy"``.
        baseline: if given, a decay in ``[0, 1)``: the advantage is the score minus a running
            mean \(b\) of the scores given (samples scored 0 excluded), updated after each batch as
            \(b \leftarrow \text{decay} \cdot b + (1 - \text{decay}) \cdot \bar s\). A baseline reduces
            the variance of the update when scores are mostly of one sign.
        generator: draws the explored answers (on the outputs' device), for reproducible runs.

    Attributes:
        score_fn (Callable[[torch.Tensor, Any], Scores]): the scoring function, as given.
        choice (Choice): which answer is judged.
        epsilon (float): the exploration probability of ``"epsilon-greedy"``.
        baseline (float | None): the baseline's decay, or ``None`` without a baseline.
        baseline_value (float): the running mean of the scores (0 before the first score).
        generator (torch.Generator | None): the generator of the explored answers.

    Raises:
        TypeError: ``score_fn`` is not callable.
        ValueError: an unknown ``choice``, ``epsilon`` outside ``[0, 1]``, ``baseline`` outside ``[0, 1)``.

    Example:
        >>> def judge(shown, labels):  # a person would look at the answer instead of a label
        ...     return torch.where(shown.argmax(dim=1) == labels, 1.0, -1.0)
        >>> opt = LFPOptimizer(model, ScoreReward(judge), lr=0.1, momentum=0.9)
    """

    def __init__(
        self,
        score_fn: Callable[[torch.Tensor, Any], Scores],
        *,
        choice: Choice = "argmax",
        epsilon: float = 0.1,
        baseline: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
        if choice not in get_args(Choice):
            raise ValueError(f"choice must be one of {get_args(Choice)}, got {choice!r}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        if baseline is not None and not 0.0 <= baseline < 1.0:
            raise ValueError(f"baseline is the running mean's decay and must lie in [0, 1), got {baseline}")
        self.score_fn = score_fn
        self.choice: Choice = choice
        self.epsilon = epsilon
        self.baseline = baseline
        self.baseline_value = 0.0
        self.generator = generator

    def __call__(self, outputs: torch.Tensor, targets: Any = None) -> torch.Tensor:
        _check_logits(outputs, type(self).__name__)
        choices = choose(outputs, self.choice, self.epsilon, self.generator)
        shown = outputs if self.choice == "argmax" else F.one_hot(choices, outputs.shape[1]).to(outputs.dtype)
        scores, judged = self.judge(shown, targets)
        advantages = self._advantages(scores, judged)
        if self.choice == "epsilon-greedy":
            advantages = advantages * exploration_weight(outputs, choices, self.epsilon)
        return policy_reward(outputs, choices, advantages)

    def judge(self, shown: torch.Tensor, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The scores of the answers in ``shown`` and which samples were judged (a score other than 0).

        Args:
            shown: a tensor shaped like the outputs whose argmax along dimension 1 is the answer.
            targets: passed to ``score_fn`` as is.

        Returns:
            the scores and a boolean mask of the judged samples, both shaped ``(batch,)``.
        """
        scores = _per_sample(self.score_fn(shown, targets), shown, "score_fn")
        if not scores.isfinite().all():
            raise ValueError("score_fn returned NaN or Inf; give a finite score, or 0 for no opinion")
        return scores, scores != 0

    def _advantages(self, scores: torch.Tensor, judged: torch.Tensor) -> torch.Tensor:
        """The scores minus the baseline at judged samples, 0 elsewhere; updates the baseline."""
        if self.baseline is None:
            return torch.where(judged, scores, 0.0)
        advantages = torch.where(judged, scores - self.baseline_value, 0.0)
        count = int(judged.sum())
        if count:
            batch_mean = float(scores[judged].sum()) / count
            self.baseline_value = self.baseline * self.baseline_value + (1.0 - self.baseline) * batch_mean
        return advantages

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume: the baseline's value and the generator's state."""
        return {
            "baseline_value": self.baseline_value,
            "generator_state": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned.

        Args:
            state: a dictionary from `state_dict`.
        """
        self.baseline_value = float(state["baseline_value"])
        if self.generator is not None and state["generator_state"] is not None:
            self.generator.set_state(state["generator_state"])


class RatingReward(ScoreReward):
    r"""Learn from graded ratings (such as 1 to 5 stars) of the chosen answer.

    ``rating_fn(shown, targets)`` returns one rating per sample in ``[low, high]``, or NaN for
    no rating. A rating \(r\) becomes the score \(s = 2 (r - \text{low}) / (\text{high} - \text{low}) - 1\)
    in \([-1, 1]\) (the lowest rating -1, the middle 0, the highest +1), and the reward is that of
    `ScoreReward`. With a baseline, a middle rating counts as a judgement (it pulls the baseline
    towards 0); only NaN means no opinion.

    Args:
        rating_fn: ``rating_fn(shown, targets)`` -> ratings shaped ``(batch,)``, see `ScoreReward`
            for ``shown``.
        low: the lowest rating.
        high: the highest rating.
        **kwargs: ``choice``, ``epsilon``, ``baseline``, ``generator``, as for `ScoreReward`.

    Attributes:
        low (float): the lowest rating.
        high (float): the highest rating.

    Raises:
        ValueError: ``low >= high``; at the call, a rating outside ``[low, high]``.
    """

    def __init__(
        self, rating_fn: Callable[[torch.Tensor, Any], Scores], *, low: float = 1.0, high: float = 5.0, **kwargs: Any
    ) -> None:
        if not low < high:
            raise ValueError(f"the lowest rating must be below the highest, got low={low}, high={high}")
        super().__init__(rating_fn, **kwargs)
        self.low = low
        self.high = high

    def judge(self, shown: torch.Tensor, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The ratings of the answers in ``shown`` as scores in ``[-1, 1]``, and which samples were rated (not NaN).

        Args:
            shown: a tensor shaped like the outputs whose argmax along dimension 1 is the answer.
            targets: passed to ``rating_fn`` as is.

        Returns:
            the scores (0 where not rated) and a boolean mask of the rated samples, both shaped ``(batch,)``.
        """
        ratings = _per_sample(self.score_fn(shown, targets), shown, "rating_fn")
        rated = ~ratings.isnan()
        outside = rated & ((ratings < self.low) | (ratings > self.high))
        if outside.any():
            bad = float(ratings[outside][0])
            raise ValueError(
                f"rating_fn returned {bad:g}, outside the scale [{self.low:g}, {self.high:g}]; "
                "return NaN for a sample without a rating"
            )
        scores = (ratings - self.low).mul_(2.0 / (self.high - self.low)).sub_(1.0)
        return torch.where(rated, scores, 0.0), rated


class PreferenceReward:
    r"""Learn from preferences between two answers: "answer A is better than answer B".

    For each sample the first answer \(a\) is chosen as by `ScoreReward` (the best guess by
    default) and the second \(b\) is drawn from the softmax of the other classes, so the two
    always differ. ``prefer_fn(first, second, targets)`` returns one preference per sample in
    \([-1, 1]\): +1 when the first is better, -1 when the second is, 0 for no preference
    (values in between weigh a preference less). With \(w\) the preferred answer, \(l\) the other
    and \(d\) the preference's magnitude, the reward is

    \[
    R = d \, \sigma(y_l - y_w) \; y \odot (e_w - e_l),
    \]

    whose seed \(R / y\) is the gradient of the Bradley-Terry log-likelihood
    \(d \log \sigma(y_w - y_l)\): it raises the preferred answer's logit, lowers the other's, and
    fades once the model already ranks them the judge's way.

    Args:
        prefer_fn: ``prefer_fn(first, second, targets)`` -> preferences shaped ``(batch,)``;
            ``first`` and ``second`` are class indices shaped ``(batch,)``.
        choice: how the first answer is chosen, as for `ScoreReward`.
        epsilon: the exploration probability of ``"epsilon-greedy"``.
        generator: draws the second answers (and explored first ones), for reproducible runs.

    Attributes:
        prefer_fn (Callable[[torch.Tensor, torch.Tensor, Any], Scores]): the preference function, as given.
        choice (Choice): how the first answer is chosen.
        epsilon (float): the exploration probability of ``"epsilon-greedy"``.
        generator (torch.Generator | None): the generator of the drawn answers.

    Raises:
        TypeError: ``prefer_fn`` is not callable.
        ValueError: an unknown ``choice`` or ``epsilon`` outside ``[0, 1]``; at the call,
            outputs with fewer than 2 classes or a preference outside ``[-1, 1]``.
    """

    def __init__(
        self,
        prefer_fn: Callable[[torch.Tensor, torch.Tensor, Any], Scores],
        *,
        choice: Choice = "argmax",
        epsilon: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        if not callable(prefer_fn):
            raise TypeError(f"prefer_fn must be callable, got {type(prefer_fn).__name__}")
        if choice not in get_args(Choice):
            raise ValueError(f"choice must be one of {get_args(Choice)}, got {choice!r}")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        self.prefer_fn = prefer_fn
        self.choice: Choice = choice
        self.epsilon = epsilon
        self.generator = generator

    def __call__(self, outputs: torch.Tensor, targets: Any = None) -> torch.Tensor:
        _check_logits(outputs, type(self).__name__)
        if outputs.shape[1] < 2:
            raise ValueError(f"PreferenceReward compares two answers but the outputs have {outputs.shape[1]} class")
        first = choose(outputs, self.choice, self.epsilon, self.generator)
        others = outputs.softmax(dim=1).scatter(1, first[:, None], 0.0)
        second = torch.multinomial(others, 1, generator=self.generator).squeeze(1)
        preferences = _per_sample(self.prefer_fn(first, second, targets), outputs, "prefer_fn")
        if not ((preferences >= -1.0) & (preferences <= 1.0)).all():
            raise ValueError("prefer_fn must return preferences in [-1, 1] (+1: first better, -1: second better)")
        winner = torch.where(preferences > 0, first, second)
        loser = torch.where(preferences > 0, second, first)
        margin = outputs.gather(1, loser[:, None]) - outputs.gather(1, winner[:, None])
        weight = preferences.abs()[:, None] * torch.sigmoid(margin)
        classes = outputs.shape[1]
        direction = F.one_hot(winner, classes).to(outputs.dtype) - F.one_hot(loser, classes).to(outputs.dtype)
        return direction.mul_(weight).mul_(outputs)
