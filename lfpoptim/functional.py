r"""The arithmetic of an LFP update, apart from any class.

Feedback is \(F_\theta = |\theta| \odot J_\theta^\top n\) and the optimizer ascends it, so
``theta.grad`` becomes \(-F_\theta\). `weight_scale_` writes that into the tensors
autograd returned, in place: \(|\theta|\) of the small tensors in one ``_foreach_abs`` call,
then one ``addcmul`` per tensor for the product with its factor. Large CPU tensors take
\(|\theta|\) through one small reused buffer, chunk by chunk, because allocating a temporary of
each large parameter's size costs more than the arithmetic (on a ResNet-18, ``_foreach_abs`` of
all 11.2M parameters spends most of its time allocating 45 MB).

Every per-tensor scalar the update needs (the sums of \(|\theta|\) for the normalisation and
the sums of the feedback factors for the finiteness check) is gathered into one vector and read
back to the host once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

CHUNK = 1 << 17
"""Elements per chunk: the reused buffer (512 KiB in float32) stays in the CPU's cache."""

TINY = 1e-12
"""Floor of a parameter tensor's summed magnitude when feedback is normalised by its mean magnitude."""


def _is_chunked(grad: torch.Tensor, param: torch.Tensor) -> bool:
    """Whether a tensor (already known to be over `CHUNK` elements) goes through the chunked CPU path."""
    return param.device.type == "cpu" and grad.is_contiguous() and param.is_contiguous()


@torch.no_grad()
def weight_scale_(
    grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor], sign: float = -1.0, normalize: bool = False
) -> bool:
    r"""``grads[i] <- c_i * |params[i]| * grads[i]``, in place, for every ``i``.

    ``c_i`` is ``sign``, divided by \(\overline{|\theta_i|}\) when ``normalize``. The product is
    one ``torch.addcmul`` per tensor (written into the gradient itself), so a tensor costs one
    pass for \(|\theta|\), one for the product and, being reductions, the two sums below.

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
    if not grads:
        return True
    count = len(grads)
    sizes = [param.numel() for param in params]
    chunked = [
        size > CHUNK and _is_chunked(grad, param) for size, grad, param in zip(sizes, grads, params, strict=True)
    ]
    small = [i for i, big in enumerate(chunked) if not big]
    large = [i for i, big in enumerate(chunked) if big]
    magnitudes = torch._foreach_abs([params[i] for i in small])

    totals = [grad.sum() for grad in grads]
    if normalize:
        totals += [magnitude.sum() for magnitude in magnitudes]
        totals += [torch.linalg.vector_norm(params[i], ord=1) for i in large]
    sums = torch.stack(totals).tolist()
    finite = math.isfinite(sum(sums[:count]))  # a NaN or an Inf anywhere makes the total NaN or Inf

    factors = [sign] * count
    if normalize:
        for i, magnitude_sum in zip(small + large, sums[count:], strict=True):
            factors[i] = sign * sizes[i] / max(magnitude_sum, TINY)

    for i, magnitude in zip(small, magnitudes, strict=True):
        _scale_(grads[i], magnitude, factors[i])

    buffer: torch.Tensor | None = None
    for i in large:
        grad, param = grads[i], params[i].detach()
        if buffer is None or buffer.dtype != param.dtype:
            buffer = torch.empty(CHUNK, dtype=param.dtype)
        flat_grad, flat_param, total = grad.view(-1), param.view(-1), param.numel()
        for start in range(0, total, CHUNK):
            stop = min(start + CHUNK, total)
            magnitude = torch.abs(flat_param[start:stop], out=buffer[: stop - start])
            _scale_(flat_grad[start:stop], magnitude, factors[i])
    return finite


def _scale_(grad: torch.Tensor, magnitude: torch.Tensor, factor: float) -> None:
    """``grad <- factor * magnitude * grad`` in one pass (``addcmul`` onto a broadcast zero, into ``grad``)."""
    torch.addcmul(_zero(grad.dtype, grad.device), grad, magnitude, value=factor, out=grad)


@functools.cache
def _zero(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-dim zero on ``device`` (not a CPU scalar: ``addcmul`` takes one only after its first operand)."""
    return torch.zeros((), dtype=dtype, device=device)
