"""Where the weights live in a mixed-precision run: trainable parameters in fp32, the compute in 16 bits.

    compute       bf16 under `trainer.mixed_precision: bf16` (autocast; `auto` resolves to it on CUDA), else fp32
    trainable     fp32 storage: AdamW's update lands on an fp32 weight, autocast casts it for each matrix product
    frozen        as built (`framework.vlm.dtype`, bf16 on CUDA by default): half the memory, never updated

Why. A bf16 number has 8 significant bits, so neighbouring values of a weight w are ~2^-8 |w| apart and a change
smaller than half of that, |delta| < 2^-9 |w|, rounds back to w. AdamW's first steps move every weight by about
the learning rate: at lr = 2.5e-5 a weight of |w| > 2.5e-5 * 2^9 = 0.0128 does not move at all. Measured on an
H200 at 3B with bf16 weights, one step changed 27.9% of the VLM's weight elements (issue 38); on CPU with the toy
config forced to bf16, 11%. LeRobot and openpi's PyTorch path keep fp32 weights under autocast for this reason;
DeepSpeed's bf16 mode keeps an fp32 master copy inside its optimizer, so under ZeRO the parameters are left to it.

Refused: 16-bit trainable weights with no master copy, i.e. a 16-bit VLM (`framework.vlm.dtype: bfloat16` or
`float16`) with `trainer.mixed_precision: no` and no DeepSpeed: the forward would run in 16 bits, the update
would round away, and an fp32 upcast would meet 16-bit frozen weights outside autocast.
Memory: a trainable parameter costs 4 (weight) + 4 (gradient) + 8 (AdamW's moments) = 16 bytes, a frozen one 2
under bf16 (`vlablocks plan`, the DDP column).
"""

from __future__ import annotations

import torch
from torch import nn

SIXTEEN_BIT = (torch.bfloat16, torch.float16)


def resolved_mixed_precision(trainer) -> str:
    """`trainer.mixed_precision` with `auto` resolved: "bf16" on CUDA, "no" on CPU."""
    if trainer.mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return trainer.mixed_precision


def keep_trainable_weights_fp32(model: nn.Module, trainer, deepspeed: bool) -> int:
    """Stores every trainable 16-bit parameter of `model` in fp32 (module docstring), before the optimizer is
    built; refuses 16-bit training without a master copy. -> the number of parameter tensors upcast."""
    trainable = [p for p in model.parameters() if p.requires_grad and p.dtype in SIXTEEN_BIT]
    if not trainable or deepspeed:  # nothing 16-bit to train, or DeepSpeed keeps the fp32 master copy
        return 0
    if resolved_mixed_precision(trainer) == "no":
        raise ValueError(
            f"{len(trainable)} trainable parameter tensors are {trainable[0].dtype} with trainer.mixed_precision "
            "resolving to no: 16-bit weights without an fp32 master copy round most updates away; set "
            "trainer.mixed_precision: bf16 (fp32 weights, bf16 compute) or framework.vlm.dtype: float32"
        )
    for parameter in trainable:
        parameter.data = parameter.data.float()
    return len(trainable)
