"""2-D + 3-D geometric features for VLA policies: geometric encoders and their fusions into a VLM.

    examples -> geometric encoder (GEOMETRIC_ENCODERS) -> GeometricTokens [B, V, g_h, g_w, C]
    merged vision tokens [N, H] + GeometricTokens -> fusion (FUSIONS) -> fused tokens [N, H]

The fusion runs as the VLM's `vision_hook`, so fused tokens replace the vision embeddings at the
image-token positions of the LLM input. See docs/spatial_fusion.md.
"""
