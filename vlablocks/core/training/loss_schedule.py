"""A loss schedule the training loop applies (`trainer.loss_schedule`): alg1's phased schedule, one part of the loss
alone first, then the other ramped in (docs/spatial_fusion.md). The model knows nothing of steps: its forward
reports its total `loss` and the `action_loss` part (vlablocks/core/auxiliary/), and the loop weights the parts.

With s the optimizer step being taken (1-based, as `vlablocks train` counts: step 1 is the first update),
N = `phase_a_steps` and M = `ramp_steps` (alg1's sagr_phase_a_steps / sagr_phase_b_ramp_steps), the ramp is

    r(s) = 0                    s <= N               (phase A)
         = (s - N) / M          N < s < N + M        (phase B: linear; M = 0 skips it)
         = 1                    s >= N + M           (phase C)

and the loss back-propagated at step s, with aux = loss - action_loss (the auxiliary losses that do not predict
actions, already weighted by their `framework.auxiliary_losses` weights):

    order geometry_first:  loss(s) = r(s) * action_loss + aux      (w_action = r, w_auxiliary = 1)
    order action_first:    loss(s) = action_loss + r(s) * aux      (w_action = 1, w_auxiliary = r)

geometry_first (the default) is what issue 21 asked: the world-model losses shape the fused tokens before the
action loss arrives, so step N is the last without the action loss, step N + 1 has 1 / M of it and step N + M
the whole of it. action_first is the StarVLA-3D fork's unfinished draft: the action loss alone, then the
auxiliary losses ramped in. The schedule is a pure function of s: resuming at step s gives the weights an
uninterrupted run had, and every micro-batch of an accumulated step shares them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PhaseSchedule:
    """phase_a_steps N >= 0, ramp_steps M >= 0 (both 0: no schedule, the model's loss as it is), order
    geometry_first | action_first (module docstring)."""

    phase_a_steps: int = 0
    ramp_steps: int = 0
    order: str = "geometry_first"

    def __post_init__(self) -> None:
        if self.phase_a_steps < 0 or self.ramp_steps < 0:
            raise ValueError(
                f"trainer.loss_schedule.phase_a_steps and ramp_steps must be >= 0, got {self.phase_a_steps} and "
                f"{self.ramp_steps}"
            )
        if self.order not in ORDERS:
            raise ValueError(f"trainer.loss_schedule.order must be one of {', '.join(ORDERS)}, got {self.order!r}")

    @property
    def active(self) -> bool:
        return self.phase_a_steps > 0 or self.ramp_steps > 0

    def ramp(self, step: int) -> float:
        """r(s) for the 1-based optimizer step s (module docstring)."""
        if step < 1:
            raise ValueError(f"training steps count from 1, got {step}")
        if step <= self.phase_a_steps:
            return 0.0
        if step >= self.phase_a_steps + self.ramp_steps:
            return 1.0
        return (step - self.phase_a_steps) / self.ramp_steps

    def action_weight(self, step: int) -> float:
        """w_action(s): r(s) under geometry_first, 1 under action_first."""
        return self.ramp(step) if self.order == "geometry_first" else 1.0

    def auxiliary_weight(self, step: int) -> float:
        """w_auxiliary(s): 1 under geometry_first, r(s) under action_first."""
        return self.ramp(step) if self.order == "action_first" else 1.0

    def phase(self, step: int) -> str:
        """ "A" (one part alone), "B" (the other ramping) or "C" (both at full weight) at step s."""
        if step <= self.phase_a_steps:
            return "A"
        return "B" if step < self.phase_a_steps + self.ramp_steps else "C"


ORDERS = ("geometry_first", "action_first")


def scheduled_loss(outputs: dict, schedule: PhaseSchedule, step: int) -> torch.Tensor:
    """The loss to back-propagate at step s: the model's own without a schedule, else w_action(s) * action_loss +
    w_auxiliary(s) * (loss - action_loss) (module docstring). A model whose forward reports no `action_loss` cannot
    be scheduled."""
    if not schedule.active:
        return outputs["loss"]
    if "action_loss" not in outputs:
        raise ValueError(
            "trainer.loss_schedule weights the action loss, but this framework's forward reports no `action_loss` "
            "beside its loss (any framework with framework.auxiliary_losses does); drop trainer.loss_schedule"
        )
    action = outputs["action_loss"]
    return schedule.action_weight(step) * action + schedule.auxiliary_weight(step) * (outputs["loss"] - action)
