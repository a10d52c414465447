r"""The arithmetic of an LFP update, apart from any class.

Feedback is \(F_\theta = |\theta| \odot J_\theta^\top n\) and the optimizer ascends it, so
``theta.grad`` becomes \(-F_\theta\). `weight_scale_` writes that into the tensors
autograd returned, in place. Small tensors go through torch's ``_foreach`` kernels (one call for
all of them); large CPU tensors go through one small reused buffer, chunk by chunk, because
allocating a temporary of each large parameter's size costs more than the arithmetic (on a
ResNet-18, ``_foreach_abs`` of all 11.2M parameters spends most of its time allocating 45 MB).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CHUNK = 1 << 17
"""Elements per chunk: the reused buffer (512 KiB in float32) stays in the CPU's cache."""

TINY = 1e-12
"""Floor of a parameter tensor's summed magnitude when feedback is normalised by its mean magnitude."""


def _is_chunked(grad: torch.Tensor, param: torch.Tensor) -> bool:
    return param.device.type == "cpu" and param.numel() > CHUNK and grad.is_contiguous() and param.is_contiguous()


@torch.no_grad()
def weight_scale_(
    grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor], sign: float = -1.0, normalize: bool = False
) -> None:
    r"""``grads[i] <- sign * |params[i]| * grads[i]``, in place, for every ``i``.

    Args:
        grads: tensors holding \(J_\theta^\top n\), overwritten with the scaled values.
        params: the parameters, same shapes as ``grads``.
        sign: ``-1`` turns feedback into a gradient for a minimising optimizer, ``+1`` gives the
            feedback itself.
        normalize: also divide each tensor by its parameter's mean magnitude
            \(\overline{|\theta|}\), so that the update has the scale of a gradient step and
            \(|\theta|\) only decides how it is shared within the tensor.
    """
    params = [param.detach() for param in params]
    chunked = [_is_chunked(grad, param) for grad, param in zip(grads, params, strict=True)]

    small_params = [param for param, big in zip(params, chunked, strict=True) if not big]
    if small_params:
        small_grads = [grad for grad, big in zip(grads, chunked, strict=True) if not big]
        magnitudes = torch._foreach_abs(small_params)
        if normalize:
            # sign / mean|theta| per tensor, computed on one small vector
            sums = torch.stack([magnitude.sum() for magnitude in magnitudes])
            numels = torch.tensor([float(param.numel()) for param in small_params], dtype=sums.dtype)
            factors = numels.to(sums.device).div_(sums.clamp_min_(TINY)).mul_(sign)
            torch._foreach_mul_(magnitudes, factors.unbind())
        else:
            torch._foreach_mul_(magnitudes, sign)
        torch._foreach_mul_(small_grads, magnitudes)

    buffer: torch.Tensor | None = None
    for grad, param, big in zip(grads, params, chunked, strict=True):
        if not big:
            continue
        factor: float | torch.Tensor = sign
        if normalize:
            factor = (sign * param.numel()) / torch.linalg.vector_norm(param, ord=1).clamp_min(TINY)
        if buffer is None or buffer.dtype != param.dtype:
            buffer = torch.empty(CHUNK, dtype=param.dtype)
        flat_grad, flat_param, total = grad.view(-1), param.view(-1), param.numel()
        for start in range(0, total, CHUNK):
            stop = min(start + CHUNK, total)
            scale = buffer[: stop - start]
            torch.abs(flat_param[start:stop], out=scale)
            scale.mul_(factor)
            flat_grad[start:stop].mul_(scale)
