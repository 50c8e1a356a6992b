"""A loss schedule the training loop applies (`trainer.loss_schedule`): alg1's phased schedule, auxiliary losses
first, then the action loss ramped in (docs/spatial_fusion.md). The model knows nothing of steps: its forward
reports its total `loss` and the `action_loss` part, and the loop weights that part by the step.

With s the optimizer step being taken (1-based, as `vlablocks train` counts: step 1 is the first update),
N = `phase_a_steps` and M = `ramp_steps` (alg1's sagr_phase_a_steps / sagr_phase_b_ramp_steps), the action loss's
weight is

    w_action(s) = 0                    s <= N               (phase A: only the auxiliary losses train)
                = (s - N) / M          N < s < N + M        (phase B: a linear ramp; M = 0 skips it)
                = 1                    s >= N + M           (after: full weight)

and the auxiliary losses that do not predict actions keep their configured weights (`framework.auxiliary_losses`:
alg1_dyn, alg1_geo, alg1_reg) in every phase:

    loss(s) = w_action(s) * action_loss + (loss - action_loss)      (loss, action_loss: the model's forward)

So step N is the last without the action loss, step N + 1 has 1 / M of it and
step N + M the whole of it. The schedule is a pure function of s: resuming at step s gives the weights
an uninterrupted run had, and every micro-batch of an accumulated step shares them.

(The anchor's unfinished draft ramped the auxiliary losses in after a phase of action loss alone; issue 21
asks for the reverse, geometry first, which is what this implements.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PhaseSchedule:
    """phase_a_steps N >= 0, ramp_steps M >= 0 (both 0: no schedule, the model's loss as it is)."""

    phase_a_steps: int = 0
    ramp_steps: int = 0

    def __post_init__(self) -> None:
        if self.phase_a_steps < 0 or self.ramp_steps < 0:
            raise ValueError(
                f"trainer.loss_schedule.phase_a_steps and ramp_steps must be >= 0, got {self.phase_a_steps} and "
                f"{self.ramp_steps}"
            )

    @property
    def active(self) -> bool:
        return self.phase_a_steps > 0 or self.ramp_steps > 0

    def action_weight(self, step: int) -> float:
        """w_action(s) for the 1-based optimizer step s (equation in the module docstring)."""
        if step < 1:
            raise ValueError(f"training steps count from 1, got {step}")
        if step <= self.phase_a_steps:
            return 0.0
        if step >= self.phase_a_steps + self.ramp_steps:
            return 1.0
        return (step - self.phase_a_steps) / self.ramp_steps

    def phase(self, step: int) -> str:
        """ "A" (auxiliary only), "B" (ramping) or "C" (full action loss) at step s."""
        if step <= self.phase_a_steps:
            return "A"
        return "B" if step < self.phase_a_steps + self.ramp_steps else "C"


def scheduled_loss(outputs: dict, schedule: PhaseSchedule, step: int) -> torch.Tensor:
    """The loss to back-propagate at step s: the model's own without a schedule, else w_action(s) * action_loss +
    the rest (module docstring). A model whose forward reports no `action_loss` cannot be scheduled."""
    if not schedule.active:
        return outputs["loss"]
    if "action_loss" not in outputs:
        raise ValueError(
            "trainer.loss_schedule weights the action loss, but this framework's forward reports no `action_loss` "
            "beside its loss (any framework with framework.auxiliary_losses does); drop trainer.loss_schedule"
        )
    action = outputs["action_loss"]
    return schedule.action_weight(step) * action + (outputs["loss"] - action)
