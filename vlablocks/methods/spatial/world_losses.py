"""alg1: auxiliary world-model losses on the fused vision tokens (docs/spatial_fusion.md, issue 21), registered
as the auxiliary losses `alg1_geo`, `alg1_dyn` and `alg1_reg` (vlablocks/core/auxiliary/base.py):

    framework: {name: QwenLayerwiseFM3D, auxiliary_losses: {alg1_geo: {weight: 1.0}, alg1_dyn: {weight: 1.0},
                                                            alg1_reg: {weight: 0.01}}}

Notation, per batch: N vision tokens (merged patches of every view of every sample), token n of sample b(n);
v_n in R^H the VLM's own (2-D) vision embedding, the fusion's input; f_n in R^H the fused token, its output;
P_t [B, V, 4, h, w] the per-pixel camera-frame points (x, y, z in metres, then validity) of frame t, as the
processor unprojects them from depth and intrinsics (GeometryPreprocess).

Geometric tokens (the targets). The geometric token of cell (r, c) of view v is the mean of P over the
pixels of that cell of the encoder's g_h x g_w grid (`cell_geometry`):

    q_t[b, v, r, c] = mean_{pixels (i, j) in cell (r, c)} P_t[b, v, :, i, j]        in R^4

and the token under vision patch n is the area-weighted mean of the cells it covers, with the same
alignment the tokenwise fusion uses (`align_to_vision_tokens`): y_t[n] in R^4. These are the geometric
encoder's input tokens, before any learned layer: a fixed target. (A learned target, the encoder's own
output tokens of frame t + k under stop-gradient, can be matched by collapsing every token to one
constant; without an EMA teacher nothing prevents it, so this target is the parameter-free one.)

    L_geo = 1 / (4 N) sum_n || g(f_n) - y_t[n] ||^2
            geometry reconstruction: the fused tokens must carry the 3-D geometry of their own patch.
    L_dyn = 1 / (4 sum_n m_n) sum_n m_n || d([f_n, a_b(n)]) - y_{t+k}[n] ||^2
            dynamics: from the fused token and the sample's normalized expert action chunk a_b [T * D] (teacher
            forcing; padded steps zeroed), predict the patch's geometric token k frames later (k =
            dataset.next_frame_offset); m_n = 1 where frame t + k lies inside the episode, else 0.
    L_reg = 1 / (H N) sum_n || f_n - v_n ||^2
            regularizer: the fused features stay near the 2-D ones (the fusion's residual stays small).

g and d are two-layer MLPs (Linear, GELU, Linear) of width `hidden_dim`; a loss of weight 0 is never built, so it
has no parameters and adds exactly zero gradient. The framework adds w_dyn L_dyn + w_geo L_geo + w_reg L_reg to
the (scheduled) action loss (trainer.loss_schedule, vlablocks/core/training/loss_schedule.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlablocks.core.auxiliary.base import AuxiliaryInputs, AuxiliaryLoss, FusionCapture
from vlablocks.core.geometry.alignment import align_to_vision_tokens
from vlablocks.core.geometry.tokens import GeometricTokens
from vlablocks.core.registry import AUXILIARY_LOSSES

POINT_CHANNELS = 4  # x, y, z, validity


def cell_geometry(points: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Per-cell mean of the points. points: [B, V, 4, h, w] -> [B, V, g_h, g_w, 4] (h, w multiples of g_h, g_w)."""
    batch, views, channels, height, width = points.shape
    if height % grid_hw[0] or width % grid_hw[1]:
        raise ValueError(f"points of {height} x {width} pixels do not tile a {grid_hw[0]} x {grid_hw[1]} grid")
    pooled = F.avg_pool2d(
        points.reshape(batch * views, channels, height, width), (height // grid_hw[0], width // grid_hw[1])
    )
    return pooled.reshape(batch, views, channels, *grid_hw).permute(0, 1, 3, 4, 2)


def token_geometry(points: torch.Tensor, view_mask: torch.Tensor, grid_hw: tuple[int, int], info) -> torch.Tensor:
    """The geometric token y[n] under every vision token: [N, 4], in the VLM's token order."""
    cells = cell_geometry(points, grid_hw)
    return align_to_vision_tokens(GeometricTokens(cells, view_mask), info)


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


def with_depth(options: dict, next_frame: bool = False) -> dict:
    """The processor's geometry options asking for depth points (the targets are unprojected depth even when the
    encoder itself does not read depth), and for the next frame's when `next_frame`."""
    geometry = {**options["geometry"], "use_depth": True}
    if next_frame:
        geometry["next_frame"] = True
    return {**options, "geometry": geometry}


def points_of(inputs: AuxiliaryInputs, name: str) -> torch.Tensor:
    geometry = inputs.batch.geometry
    if geometry is None or geometry.points is None:
        raise ValueError(
            f"auxiliary_losses.{name} needs depth in the batch: set dataset.depth_keys (and intrinsics_keys)"
        )
    return geometry.points


class WorldLoss(AuxiliaryLoss):
    """An alg1 loss: reads the fusion's capture."""

    needs_fusion = True

    @dataclass(frozen=True)
    class Config:
        name: str = ""
        weight: float = 0.0  # w in the module docstring; 0: not built
        hidden_dim: int = 128  # width of the two-layer MLP head (L_geo, L_dyn)

    @staticmethod
    def capture(inputs: AuxiliaryInputs) -> FusionCapture:
        if inputs.fusion is None:
            raise ValueError("alg1's losses read the geometric fusion's tokens; the forward captured none")
        return inputs.fusion


@AUXILIARY_LOSSES.register("alg1_geo")
class GeometryReconstruction(WorldLoss):
    """L_geo: the fused tokens reconstruct their patch's 3-D geometry."""

    def __init__(self, config: WorldLoss.Config, *, vlm, platform) -> None:
        super().__init__(config.weight)
        self.head = mlp(vlm.hidden_size, config.hidden_dim, POINT_CHANNELS)

    def processor_options(self, options: dict) -> dict:
        return with_depth(options)

    def forward(self, inputs: AuxiliaryInputs) -> torch.Tensor:
        """-> L_geo (scalar)."""
        fusion = self.capture(inputs)
        target = token_geometry(
            points_of(inputs, "alg1_geo"), inputs.batch.geometry.view_mask, fusion.grid_hw, fusion.info
        )
        return self.reconstruction(fusion.fused, target)

    def reconstruction(self, fused: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """fused: [N, H]; target: [N, 4] = y_t -> L_geo."""
        prediction = self.head(fused.to(self.head[0].weight.dtype))
        return F.mse_loss(prediction, target.to(prediction.dtype))


@AUXILIARY_LOSSES.register("alg1_dyn")
class GeometryDynamics(WorldLoss):
    """L_dyn: from a fused token and the sample's action chunk, the patch's geometry k frames later."""

    def __init__(self, config: WorldLoss.Config, *, vlm, platform) -> None:
        super().__init__(config.weight)
        chunk = platform.action_horizon * platform.action_dim
        self.head = mlp(vlm.hidden_size + chunk, config.hidden_dim, POINT_CHANNELS)

    def processor_options(self, options: dict) -> dict:
        return with_depth(options, next_frame=True)

    def forward(self, inputs: AuxiliaryInputs) -> torch.Tensor:
        """-> L_dyn (scalar)."""
        fusion, batch = self.capture(inputs), inputs.batch
        points_of(inputs, "alg1_dyn")
        geometry = batch.geometry
        if geometry.next_points is None or batch.actions is None:
            raise ValueError(
                "auxiliary_losses.alg1_dyn needs the next frame's depth: set dataset.next_frame_offset (e.g. 1) and "
                "train on samples with actions"
            )
        target = token_geometry(geometry.next_points, geometry.view_mask, fusion.grid_hw, fusion.info)
        actions = batch.actions.masked_fill(batch.action_is_pad[..., None], 0.0).flatten(1)
        valid = geometry.next_valid.to(fusion.fused.device)[fusion.info.batch_index]
        return self.dynamics(fusion.fused, actions, fusion.info.batch_index, target, valid)

    def dynamics(
        self, fused: torch.Tensor, actions: torch.Tensor, token_sample: torch.Tensor, target: torch.Tensor, valid
    ) -> torch.Tensor:
        """fused: [N, H]; actions: [B, T * D]; token_sample: [N] = b(n); target: [N, 4] = y_{t+k}; valid: [N] bool
        = m_n -> L_dyn (0 when no token is valid, still attached to the graph)."""
        dtype = self.head[0].weight.dtype
        inputs = torch.cat([fused.to(dtype), actions.to(dtype)[token_sample]], dim=-1)
        error = (self.head(inputs) - target.to(dtype)).pow(2).mean(dim=-1)  # [N]
        mask = valid.to(dtype)
        return (error * mask).sum() / mask.sum().clamp(min=1.0)


@AUXILIARY_LOSSES.register("alg1_reg")
class FusionRegularizer(WorldLoss):
    """L_reg: the fused features stay near the 2-D ones (no parameters)."""

    @dataclass(frozen=True)
    class Config:
        name: str = "alg1_reg"
        weight: float = 0.0  # w_reg in the module docstring; 0: not built

    def __init__(self, config: Config, *, vlm, platform) -> None:
        super().__init__(config.weight)

    def forward(self, inputs: AuxiliaryInputs) -> torch.Tensor:
        """-> L_reg = mean ||f_n - v_n||^2 (scalar)."""
        fusion = self.capture(inputs)
        return (fusion.fused.float() - fusion.vision.float()).pow(2).mean()
