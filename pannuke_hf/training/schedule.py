"""Optimizer and learning-rate schedule of the reference runs ("1xb16 20k").

The reference trains with SGD (momentum 0.9, weight decay 0.0005 on every parameter) and a
polynomial decay with a floor, for optimizer steps ``t = 0 .. total_steps - 1``::

    lr(t) = (lr0 - min_lr) * (1 - t / (total_steps - 1)) ** power + min_lr,   min_lr = 1e-4, power = 0.9

The divisor is ``total_steps - 1``, as mmengine's ``PolyLR(begin=0, end=total_steps)`` (its
``end - begin - 1``): the last step (``t = 19999`` of 20,000) runs at exactly ``min_lr``.

``transformers.get_polynomial_decay_schedule_with_warmup`` refuses ``lr_end >= lr_init``, and one
published run has ``lr0 == min_lr``, so the schedule is implemented here as a plain
``torch.optim.lr_scheduler.LRScheduler``: its state (step, constants) travels in the checkpoint's
``scheduler.pt`` and a resumed run continues on the same curve.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LRScheduler

#: The reference's LR floor (``eta_min``) and decay power.
REFERENCE_MIN_LR: float = 1e-4
REFERENCE_POLY_POWER: float = 0.9
REFERENCE_MOMENTUM: float = 0.9
REFERENCE_WEIGHT_DECAY: float = 5e-4


def poly_lr(
    step: int, base_lr: float, total_steps: int, min_lr: float = REFERENCE_MIN_LR, power: float = 0.9
) -> float:
    """Learning rate of the reference polynomial schedule at optimizer step ``step``.

    Args:
        step: number of optimizer steps already taken (0 for the first update). Steps at or past
            ``total_steps - 1`` run at ``min_lr``.
        base_lr: the initial learning rate ``lr0``.
        total_steps: number of optimizer steps of the run (the reference: 20,000).
        min_lr: the floor, reached at the last step ``total_steps - 1``.
        power: exponent of the decay.

    Returns:
        ``(base_lr - min_lr) * (1 - t / (total_steps - 1)) ** power + min_lr`` with
        ``t = min(step, total_steps - 1)``; ``base_lr`` throughout when ``total_steps == 1`` (a
        single step runs at ``lr0``, as mmengine's scheduler does at its first step).
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    last = total_steps - 1
    if last == 0:
        return base_lr
    t = min(max(step, 0), last)
    return (base_lr - min_lr) * (1.0 - t / last) ** power + min_lr


class PolyLRScheduler(LRScheduler):
    """Polynomial decay to a floor, exactly :func:`poly_lr` for every parameter group.

    Unlike ``transformers``' polynomial schedule it accepts ``min_lr >= lr0`` (the curve is then
    flat or rising, as in the reference library).

    Args:
        optimizer: the wrapped optimizer; each group's ``lr`` at construction is its ``lr0``.
        total_steps: length of the decay in optimizer steps.
        min_lr: the floor.
        power: exponent of the decay.
        last_epoch: index of the last step taken (-1 for a fresh schedule).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        min_lr: float = REFERENCE_MIN_LR,
        power: float = REFERENCE_POLY_POWER,
        last_epoch: int = -1,
    ) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.total_steps = int(total_steps)
        self.min_lr = float(min_lr)
        self.power = float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # noqa: D102 - LRScheduler hook
        return [
            poly_lr(self.last_epoch, base, self.total_steps, self.min_lr, self.power)
            for base in self.base_lrs
        ]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


def build_sgd(
    parameters: Iterable[torch.nn.Parameter],
    lr: float,
    momentum: float = REFERENCE_MOMENTUM,
    weight_decay: float = REFERENCE_WEIGHT_DECAY,
    fused: bool | None = None,
) -> torch.optim.SGD:
    """SGD as the reference configures it: one group, weight decay on every parameter.

    (``transformers``' default optimizer exempts biases and norm weights from weight decay; the
    reference does not, so neither does this.)

    Args:
        parameters: the trainable parameters.
        lr: initial learning rate ``lr0``.
        momentum: SGD momentum.
        weight_decay: L2 penalty applied to all parameters.
        fused: use torch's fused SGD kernel (CUDA parameters); None: torch's default implementation.

    Returns:
        A ``torch.optim.SGD`` instance.
    """
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("build_sgd: the model has no trainable parameters")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
