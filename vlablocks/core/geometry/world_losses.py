"""alg1: auxiliary world-model losses on the fused vision tokens (docs/spatial_fusion.md, issue 21).

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

g and d are two-layer MLPs (Linear, GELU, Linear); each exists only when its weight is > 0, and a loss of
weight 0 is never computed, so it adds exactly zero gradient. The framework adds
w_dyn L_dyn + w_geo L_geo + w_reg L_reg to the (scheduled) action loss (vlablocks/core/framework/phase_schedule.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlablocks.core.geometry.alignment import align_to_vision_tokens
from vlablocks.core.geometry.tokens import GeometricTokens

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


class WorldLosses(nn.Module):
    """The alg1 auxiliary losses; heads only for the losses whose weight is > 0.

    vision_dim H, action_dim T * D (the flattened chunk), hidden_dim: the MLPs' width.
    """

    def __init__(
        self, vision_dim: int, action_dim: int, w_dyn: float, w_geo: float, w_reg: float, hidden_dim: int = 128
    ) -> None:
        super().__init__()
        if min(w_dyn, w_geo, w_reg) < 0:
            raise ValueError(f"loss_w_dyn, loss_w_geo, loss_w_reg must be >= 0, got {w_dyn}, {w_geo}, {w_reg}")
        self.weights = {"dyn": float(w_dyn), "geo": float(w_geo), "reg": float(w_reg)}
        self.geometry_head = mlp(vision_dim, hidden_dim, POINT_CHANNELS) if w_geo > 0 else None
        self.dynamics_head = mlp(vision_dim + action_dim, hidden_dim, POINT_CHANNELS) if w_dyn > 0 else None

    @property
    def needs_points(self) -> bool:
        return self.geometry_head is not None or self.dynamics_head is not None

    @property
    def needs_next_frame(self) -> bool:
        return self.dynamics_head is not None

    def reconstruction(self, fused: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_geo. fused: [N, H]; target: [N, 4] = y_t -> scalar."""
        prediction = self.geometry_head(fused.to(self.geometry_head[0].weight.dtype))
        return F.mse_loss(prediction, target.to(prediction.dtype))

    def dynamics(
        self, fused: torch.Tensor, actions: torch.Tensor, token_sample: torch.Tensor, target: torch.Tensor, valid
    ) -> torch.Tensor:
        """L_dyn. fused: [N, H]; actions: [B, T * D]; token_sample: [N] = b(n); target: [N, 4] = y_{t+k};
        valid: [N] bool = m_n -> scalar (0 when no token is valid, still attached to the graph)."""
        dtype = self.dynamics_head[0].weight.dtype
        inputs = torch.cat([fused.to(dtype), actions.to(dtype)[token_sample]], dim=-1)
        error = (self.dynamics_head(inputs) - target.to(dtype)).pow(2).mean(dim=-1)  # [N]
        mask = valid.to(dtype)
        return (error * mask).sum() / mask.sum().clamp(min=1.0)

    @staticmethod
    def regularizer(fused: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
        """L_reg. fused, vision: [N, H] -> scalar."""
        return (fused.float() - vision.float()).pow(2).mean()

    def forward(self, capture: dict, batch, grid_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """capture: {"vision": v [N, H], "fused": f [N, H], "info": the VLM's VisionHookInfo}; batch: the Batch.

        -> {"loss_dyn", "loss_geo", "loss_reg"} for the losses of weight > 0 (unweighted scalars)."""
        fused, vision, info = capture["fused"], capture["vision"], capture["info"]
        geometry = batch.geometry
        losses = {}
        if self.needs_points and (geometry is None or geometry.points is None):
            raise ValueError(
                "loss_w_geo / loss_w_dyn > 0 need depth in the batch: set dataset.depth_keys (and intrinsics_keys)"
            )
        if self.geometry_head is not None:
            target = token_geometry(geometry.points, geometry.view_mask, grid_hw, info)
            losses["loss_geo"] = self.reconstruction(fused, target)
        if self.dynamics_head is not None:
            if geometry.next_points is None or batch.actions is None:
                raise ValueError(
                    "loss_w_dyn > 0 needs the next frame's depth: set dataset.next_frame_offset (e.g. 1) and train "
                    "on samples with actions"
                )
            target = token_geometry(geometry.next_points, geometry.view_mask, grid_hw, info)
            actions = batch.actions.masked_fill(batch.action_is_pad[..., None], 0.0).flatten(1)
            valid = geometry.next_valid.to(fused.device)[info.batch_index]
            losses["loss_dyn"] = self.dynamics(fused, actions, info.batch_index, target, valid)
        if self.weights["reg"] > 0:
            losses["loss_reg"] = self.regularizer(fused, vision)
        return losses

    def weighted_sum(self, losses: dict[str, torch.Tensor]) -> torch.Tensor | float:
        """w_dyn L_dyn + w_geo L_geo + w_reg L_reg over the computed losses (0.0 when none is)."""
        return sum(self.weights[name.removeprefix("loss_")] * value for name, value in losses.items())
