"""The one-line swap in other people's training code: timm's factory, Lightning, Hugging Face's Trainer.

Each client builds its optimizer its own way; ``DropInLFPOptimizer(model, base=optimizer)`` takes
that optimizer as it is. Each test trains the digits MLP through the client twice from the same
start, once with the client's own optimizer (SGD on cross-entropy) and once with that optimizer
wrapped, and asks LFP to come within a few points of SGD.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from digits import accuracy, digits
from torch import nn

from lfpoptim import DropInLFPOptimizer, LFPOptimizer, SoftmaxLossReward

TOLERANCE = 0.03


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def batches(epochs: int, size: int = 64):
    train_x, train_y, _, _ = digits()
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for index in torch.randperm(len(train_y), generator=generator).split(size):
            yield train_x[index], train_y[index]


def test_a_built_optimizer_is_used_as_it_is_and_extra_options_are_refused() -> None:
    model = mlp()
    sgd = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.01}, {"params": model[2].parameters()}], lr=0.1, momentum=0.9
    )
    for optimizer in (LFPOptimizer(model, SoftmaxLossReward(), base=sgd), DropInLFPOptimizer(model, base=sgd)):
        assert optimizer.base is sgd
        assert optimizer.param_groups is sgd.param_groups
        assert optimizer.state is sgd.state
        if isinstance(optimizer, DropInLFPOptimizer):
            optimizer.close()
    with pytest.raises(TypeError, match=r"already built \(SGD\).*got lr as well"):
        LFPOptimizer(model, SoftmaxLossReward(), base=sgd, lr=0.5)
    with pytest.raises(TypeError, match="got params as well"):
        DropInLFPOptimizer(model, base=sgd, params=model.parameters())
    lfp = LFPOptimizer(model, SoftmaxLossReward(), base=sgd)
    with pytest.raises(TypeError, match=r"already an LFP optimizer \(LFPOptimizer\)"):
        DropInLFPOptimizer(model, base=lfp)


def test_the_wrapped_optimizers_own_group_settings_and_hooks_apply() -> None:
    model = mlp()
    x, t = next(batches(1))
    sgd = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters()}], lr=0.1)
    calls = []
    sgd.register_step_post_hook(lambda optimizer, args, kwargs: calls.append(optimizer))
    first = model[0].weight.detach().clone()
    last = model[2].weight.detach().clone()
    LFPOptimizer(model, SoftmaxLossReward(), base=sgd).step(x, t)
    assert calls == [sgd]
    assert torch.equal(model[0].weight, first)  # its group's lr is 0
    assert not torch.equal(model[2].weight, last)


def test_timm_create_optimizer_v2_with_layer_decay_and_its_scheduler() -> None:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    _, _, test_x, test_y = digits()
    results = {}
    for method in ("sgd", "lfp"):
        model = mlp()
        optimizer = create_optimizer_v2(model, opt="momentum", lr=0.1, weight_decay=1e-4, layer_decay=0.9)
        assert len(optimizer.param_groups) > 1  # timm's own grouping: decay / no decay per layer
        if method == "lfp":
            optimizer = DropInLFPOptimizer(model, base=optimizer)  # the one line
        scheduler, epochs = create_scheduler_v2(optimizer, sched="cosine", num_epochs=4, warmup_epochs=0)
        for epoch in range(epochs):
            for x, t in batches(1):
                optimizer.zero_grad()
                F.cross_entropy(model(x), t).backward()
                optimizer.step()
            scheduler.step(epoch + 1)
        results[method] = accuracy(model, test_x, test_y)
    assert results["sgd"] > 0.9
    assert results["lfp"] >= results["sgd"] - TOLERANCE, results


def test_lightning_configure_optimizers_returning_a_wrapped_optimizer_and_scheduler() -> None:
    lightning = pytest.importorskip("lightning", reason="PyTorch Lightning is not installed")
    train_x, train_y, test_x, test_y = digits()

    class DigitsModule(lightning.LightningModule):
        def __init__(self, lfp: bool) -> None:
            super().__init__()
            self.net = mlp()
            self.lfp = lfp

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> torch.Tensor:
            inputs, targets = batch
            return F.cross_entropy(self.net(inputs), targets)

        def configure_optimizers(self) -> dict[str, object]:
            optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
            if self.lfp:
                optimizer = DropInLFPOptimizer(self.net, base=optimizer)  # the one line
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
            return {"optimizer": optimizer, "lr_scheduler": scheduler}

    results = {}
    for lfp in (False, True):
        module = DigitsModule(lfp)
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(train_x, train_y), batch_size=64, shuffle=True
        )
        quiet = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
        trainer = lightning.Trainer(max_epochs=3, enable_model_summary=False, **quiet)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's advice on workers and logging
            trainer.fit(module, loader)
        results[lfp] = accuracy(module.net.eval(), test_x, test_y)
    assert results[False] > 0.9
    assert results[True] >= results[False] - TOLERANCE, results


def test_hugging_face_trainer_with_a_model_that_computes_its_own_loss(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_outputs import SequenceClassifierOutput

    class DigitsConfig(transformers.PretrainedConfig):
        model_type = "lfpoptim-digits-mlp"

    class DigitsClassifier(transformers.PreTrainedModel):
        """A Hugging Face model: keyword inputs, loss from ``labels=``, a ``ModelOutput``."""

        config_class = DigitsConfig

        def __init__(self, config: DigitsConfig) -> None:
            super().__init__(config)
            self.net = mlp()

        def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
            logits = self.net(pixel_values)
            loss = None if labels is None else F.cross_entropy(logits, labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)

    train_x, train_y, test_x, test_y = digits()
    dataset = [{"pixel_values": x, "labels": y} for x, y in zip(train_x, train_y, strict=True)]
    start = DigitsClassifier(DigitsConfig())
    results = {}
    for lfp in (False, True):
        model = copy.deepcopy(start)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if lfp:
            optimizer = DropInLFPOptimizer(model, base=optimizer, strict=True)  # the one line
        arguments = transformers.TrainingArguments(
            output_dir=str(tmp_path / str(lfp)),
            num_train_epochs=3,
            per_device_train_batch_size=64,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        trainer = transformers.Trainer(model=model, args=arguments, train_dataset=dataset, optimizers=(optimizer, None))
        trainer.train()
        model.eval()
        with torch.no_grad():
            results[lfp] = float((model(pixel_values=test_x).logits.argmax(1) == test_y).float().mean())
    assert results[False] > 0.9
    assert results[True] >= results[False] - TOLERANCE, results
