"""Spatial methods: alg1's auxiliary world-model losses on the fused vision tokens (world_losses.py), composed into
QwenLayerwiseFM3D by `framework.auxiliary_losses` (docs/spatial_fusion.md)."""
