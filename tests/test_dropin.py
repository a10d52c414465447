"""Drop-in mode: an unchanged SGD loop trains with LFP when only the optimizer line changes."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from digits import accuracy, conv_stem, digits
from torch import nn

from lfpoptim import BinarySigmoidLossReward, LFPOptimizer, SigmoidLossReward, SoftmaxLossReward
from lfpoptim.dropin import DropInLFPOptimizer


def make_cnn(classes: int = 5) -> nn.Module:
    return nn.Sequential(*conv_stem(), nn.Linear(64, 16), nn.SiLU(), nn.Linear(16, classes)).eval()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def dropin_feedback(model: nn.Module, loss: torch.Tensor, opt: DropInLFPOptimizer) -> dict[str, torch.Tensor]:
    loss.backward()
    return {name: -(p.grad * p.detach().abs()) for name, p in model.named_parameters()}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_backward_is_the_explicit_lfp_pass(reduction):
    model, x, t = make_cnn(), torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    explicit = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, feedback_reduction=reduction).feedback(x, t)
    with DropInLFPOptimizer(model, lr=0.1, feedback_scaling="none") as opt:
        ours = dropin_feedback(model, F.cross_entropy(model(x), t, reduction=reduction), opt)
    for name, expected in explicit.items():
        assert relative_error(ours[name], expected) <= 1e-6, name


def test_bce_with_logits_backward_is_the_explicit_sigmoid_pass():
    model, x, t = make_cnn(), torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    explicit = LFPOptimizer(model, SigmoidLossReward(), lr=0.1, feedback_reduction="sum").feedback(x, t)
    with DropInLFPOptimizer(model, lr=0.1, feedback_scaling="none") as opt:
        loss = F.binary_cross_entropy_with_logits(model(x), F.one_hot(t, 5).float(), reduction="sum")
        ours = dropin_feedback(model, loss, opt)
    for name, expected in explicit.items():
        assert relative_error(ours[name], expected) <= 1e-6, name


def test_single_logit_bce_is_the_binary_sigmoid_pass():
    model, x, t = make_cnn(classes=1), torch.randn(8, 1, 8, 8), torch.randint(0, 2, (8,))
    explicit = LFPOptimizer(model, BinarySigmoidLossReward(), lr=0.1, feedback_reduction="mean").feedback(x, t)
    with DropInLFPOptimizer(model, lr=0.1, feedback_scaling="none") as opt:
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), t.float())
        ours = dropin_feedback(model, loss, opt)
    for name, expected in explicit.items():
        assert relative_error(ours[name], expected) <= 1e-6, name


def test_step_matches_the_explicit_step_with_normalized_feedback():
    x, t = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    explicit_model, dropin_model = make_cnn(), make_cnn()
    dropin_model.load_state_dict(explicit_model.state_dict())
    LFPOptimizer(explicit_model, SoftmaxLossReward(), lr=0.1, momentum=0.9).step(x, t)
    opt = DropInLFPOptimizer(dropin_model, lr=0.1, momentum=0.9)
    opt.zero_grad()
    F.cross_entropy(dropin_model(x), t).backward()
    opt.step()
    for a, b in zip(explicit_model.parameters(), dropin_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def mnist_style_loop(model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int) -> float:
    """The shape of PyTorch's MNIST example: zero_grad, forward, loss, backward, step, scheduler."""
    train_x, train_y, test_x, test_y = digits()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            optimizer.zero_grad()
            output = model(train_x[index])
            loss = F.cross_entropy(output, train_y[index])
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        with torch.no_grad():
            test_accuracy = accuracy(model, test_x, test_y)
    return test_accuracy


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10))


def test_unchanged_loop_trains_digits_like_the_explicit_mode():
    for seed in (0, 1):
        model = mlp(seed)
        dropin = mnist_style_loop(model, DropInLFPOptimizer(model, lr=0.1, momentum=0.9), epochs=4)

        model = mlp(seed)
        explicit_opt = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, momentum=0.9)
        train_x, train_y, test_x, test_y = digits()
        scheduler = torch.optim.lr_scheduler.StepLR(explicit_opt, step_size=1, gamma=0.7)
        generator = torch.Generator().manual_seed(0)
        for _ in range(4):
            model.train()
            order = torch.randperm(len(train_x), generator=generator)
            for start in range(0, len(order), 64):
                index = order[start : start + 64]
                explicit_opt.step(train_x[index], train_y[index])
            scheduler.step()
        model.eval()
        explicit = accuracy(model, test_x, test_y)
        assert dropin > 0.93
        assert abs(dropin - explicit) <= 0.01


def test_evaluation_under_no_grad_is_untouched():
    model = make_cnn()
    x = torch.randn(4, 1, 8, 8)
    expected = model(x)
    with DropInLFPOptimizer(model, lr=0.1, zero_parameters="keep"), torch.no_grad():
        assert torch.equal(model(x), expected)
        assert torch._C._len_torch_function_stack() == 0


def test_close_restores_the_model_exactly():
    model = make_cnn()
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))
    F.cross_entropy(model(x), t).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    opt = DropInLFPOptimizer(model, lr=0.1, zero_parameters="keep")
    assert opt.attached
    assert "forward" in vars(model)  # the wrapper, an instance attribute: no hook
    assert not model._forward_hooks
    assert not model._forward_pre_hooks
    opt.close()
    assert not opt.attached
    assert "forward" not in vars(model)
    assert not model._forward_hooks
    assert not model._forward_pre_hooks
    model.zero_grad()
    F.cross_entropy(model(x), t).backward()
    for p, expected in zip(model.parameters(), plain, strict=True):
        assert torch.equal(p.grad, expected)


def plain_gradients(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    F.cross_entropy(model(x), t).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_a_deep_copy_of_an_attached_model_is_a_plain_model():
    """An EMA copy, say: bound to the copy, the wrapper runs the copy's own forward, untraced."""
    model, x, t = make_cnn(), torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))
    expected = plain_gradients(copy.deepcopy(model), x, t)
    with DropInLFPOptimizer(model, lr=0.1, zero_parameters="keep"):
        twin = copy.deepcopy(model)
        lfp = plain_gradients(model, x, t)
        assert all(torch.equal(a, b) for a, b in zip(plain_gradients(twin, x, t), expected, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(lfp, expected, strict=True))


def test_a_forward_set_on_the_instance_is_wrapped_and_put_back():
    model, x, t = make_cnn(), torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))
    calls = []

    def own_forward(inputs: torch.Tensor) -> torch.Tensor:
        calls.append(len(inputs))
        return type(model).forward(model, inputs)

    model.forward = own_forward
    explicit = LFPOptimizer(model, SoftmaxLossReward(), lr=0.1, feedback_reduction="mean").feedback(x, t)
    with DropInLFPOptimizer(model, lr=0.1, feedback_scaling="none") as opt:
        ours = dropin_feedback(model, F.cross_entropy(model(x), t), opt)
    assert vars(model)["forward"] is own_forward
    assert calls == [4, 4]
    for name, expected in explicit.items():
        assert relative_error(ours[name], expected) <= 1e-6, name


def test_two_dropin_optimizers_on_one_model_trace_once_and_close_in_reverse_order():
    model, x, t = make_cnn(), torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))
    first = DropInLFPOptimizer(model, lr=0.1)
    expected = plain_gradients(model, x, t)
    second = DropInLFPOptimizer(model, lr=0.1)
    assert all(torch.equal(a, b) for a, b in zip(plain_gradients(model, x, t), expected, strict=True))
    with pytest.raises(RuntimeError, match="close the one attached last first"):
        first.close()
    second.close()
    first.close()
    assert "forward" not in vars(model)


def test_a_failing_forward_leaves_no_mode_behind():
    model = make_cnn()
    DropInLFPOptimizer(model, lr=0.1)
    with pytest.raises(RuntimeError):
        model(torch.randn(4, 3, 8, 8))  # wrong channel count
    assert torch._C._len_torch_function_stack() == 0


def test_other_losses_warn_once_or_refuse_in_strict_mode():
    model, x = make_cnn(), torch.randn(4, 1, 8, 8)
    target = torch.randn(4, 5)
    with DropInLFPOptimizer(model, lr=0.1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            F.mse_loss(model(x), target).backward()
            F.mse_loss(model(x), target).backward()
        messages = [str(w.message) for w in caught if "DropInLFPOptimizer" in str(w.message)]
        assert len(messages) == 1
        assert "is not that of cross_entropy" in messages[0]
    with DropInLFPOptimizer(model, lr=0.1, strict=True), pytest.raises(ValueError, match="is not that of"):
        F.mse_loss(model(x), target).backward()


def test_closure_checkpoint_and_scheduler_work_as_with_sgd():
    model, x, t = make_cnn(), torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    opt = DropInLFPOptimizer(model, lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), t)
        loss.backward()
        return loss

    loss = opt.step(closure)
    scheduler.step()
    assert isinstance(loss, torch.Tensor)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    sgd = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    sgd.load_state_dict(torch.load(buffer, weights_only=True))
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.05)
    opt.close()


def test_timm_train_loop_style():
    timm = pytest.importorskip("timm")
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.scheduler import CosineLRScheduler

    model = timm.create_model("resnet18", pretrained=False, num_classes=4, in_chans=1)
    opt = DropInLFPOptimizer(model, base="sgd", lr=0.05, momentum=0.9, weight_decay=0.0)
    scheduler = CosineLRScheduler(opt, t_initial=4)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=0.1)
    x, t = torch.randn(8, 1, 32, 32), torch.randint(0, 4, (8,))
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # label smoothing is a soft-target cross-entropy: exact, no warning
        for epoch in range(2):
            opt.zero_grad()
            loss = loss_fn(model(x), t)
            loss.backward()
            opt.step()
            scheduler.step(epoch + 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    opt.close()


def test_lightning_automatic_optimization():
    lightning = pytest.importorskip("lightning", reason="PyTorch Lightning is not installed; interop check skipped")
    train_x, train_y, test_x, test_y = digits()

    class DigitsModule(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp(0)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> torch.Tensor:
            inputs, targets = batch
            return F.cross_entropy(self.net(inputs), targets)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return DropInLFPOptimizer(self.net, lr=0.1, momentum=0.9)

    module = DigitsModule()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train_x, train_y), batch_size=64, shuffle=True)
    trainer = lightning.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(module, loader)
    module.net.eval()
    assert accuracy(module.net, test_x, test_y) > 0.9
