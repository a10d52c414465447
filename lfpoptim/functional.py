r"""The arithmetic of an LFP update, apart from any class.

Feedback is \(F_\theta = |\theta| \odot J_\theta^\top n\) and the optimizer ascends it, so
``theta.grad`` becomes \(-F_\theta\). `weight_scale_` writes that into the tensors
autograd returned, in place. Small tensors go through torch's ``_foreach`` kernels (one call for
all of them); large CPU tensors go through one small reused buffer, chunk by chunk, because
allocating a temporary of each large parameter's size costs more than the arithmetic (on a
ResNet-18, ``_foreach_abs`` of all 11.2M parameters spends most of its time allocating 45 MB).

Every per-tensor scalar the update needs (the sums of \(|\theta|\) for the normalisation and
the sums of the feedback factors for the finiteness check) is gathered into one vector and read
back to the host once, so the per-step cost stays a handful of kernel launches however many
tensors the model has.
"""

from __future__ import annotations

import math
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
) -> bool:
    r"""``grads[i] <- sign * |params[i]| * grads[i]``, in place, for every ``i``.

    Args:
        grads: tensors holding \(J_\theta^\top n\), overwritten with the scaled values.
        params: the parameters, same shapes as ``grads``.
        sign: ``-1`` turns feedback into a gradient for a minimising optimizer, ``+1`` gives the
            feedback itself.
        normalize: also divide each tensor by its parameter's mean magnitude
            \(\overline{|\theta|}\), so that the update has the scale of a gradient step and
            \(|\theta|\) only decides how it is shared within the tensor.

    Returns:
        whether every value of ``grads`` was finite before scaling (a NaN or an Inf sums to a
        non-finite total; so does, harmlessly rarely, a finite tensor whose sum overflows).
    """
    chunked = [_is_chunked(grad, param) for grad, param in zip(grads, params, strict=True)]
    small = [index for index, big in enumerate(chunked) if not big]
    large = [index for index, big in enumerate(chunked) if big]
    small_params = [params[index] for index in small]
    small_grads = [grads[index] for index in small]
    magnitudes = torch._foreach_abs(small_params) if small else []

    totals = [grad.sum() for grad in grads]
    if normalize:
        totals += [magnitude.sum() for magnitude in magnitudes]
        totals += [torch.linalg.vector_norm(params[index], ord=1) for index in large]
    sums = torch.stack(totals).tolist() if totals else []
    finite = all(math.isfinite(value) for value in sums[: len(grads)])

    factors = [sign] * len(grads)
    if normalize:
        order = small + large
        for index, magnitude_sum in zip(order, sums[len(grads) :], strict=True):
            factors[index] = sign * params[index].numel() / max(magnitude_sum, TINY)

    if small:
        torch._foreach_mul_(magnitudes, [factors[index] for index in small])
        torch._foreach_mul_(small_grads, magnitudes)

    buffer: torch.Tensor | None = None
    for index in large:
        grad, param = grads[index], params[index].detach()
        if buffer is None or buffer.dtype != param.dtype:
            buffer = torch.empty(CHUNK, dtype=param.dtype)
        flat_grad, flat_param, total = grad.view(-1), param.view(-1), param.numel()
        for start in range(0, total, CHUNK):
            stop = min(start + CHUNK, total)
            scale = buffer[: stop - start]
            torch.abs(flat_param[start:stop], out=scale)
            scale.mul_(factors[index])
            flat_grad[start:stop].mul_(scale)
    return finite
