"""`vlablocks export --ckpt DIR --out DIR2 [--merge-lora] [--vlm-only]`: a clean, servable copy of a checkpoint.

The copy is in the current layout: a checkpoint written before processors (norm_stats.json beside the
weights) comes out with its `processor/`. `--vlm-only` writes just the trained VLM backbone as a
transformers directory (model + tokenizer with the tokens the framework added), which any framework
then starts from with `framework.vlm.base_vlm: DIR2`: e.g. a value model on a trained policy's backbone.
"""

from __future__ import annotations

import argparse
import dataclasses

NAME = "export"
HELP = "export a checkpoint (optionally folding LoRA adapters into the weights) to a new directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint directory (model.safetensors + config.yaml)")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--merge-lora", action="store_true", help="fold LoRA adapters into the base weights")
    parser.add_argument(
        "--vlm-only", action="store_true", help="write only the VLM backbone, as a directory for framework.vlm.base_vlm"
    )


def export_checkpoint(ckpt: str, out: str, merge_lora: bool, vlm_only: bool = False) -> dict:
    """Loads `ckpt`, optionally merges LoRA, writes `out` atomically -> {"parameters": n, "merged": bool}.

    vlm_only: write the VLM backbone alone (VLMBackbone.save_pretrained), its parameters counted."""
    from vlablocks.core.atomic import atomic_directory
    from vlablocks.core.capabilities import Steerable
    from vlablocks.core.policy.policy import Policy

    policy = Policy.from_pretrained(ckpt)
    framework = policy.model
    merged = False
    if merge_lora:
        if not framework.vlm.lora_enabled:
            raise ValueError(f"{ckpt} has no LoRA adapters (framework.vlm.lora.enabled is false); drop --merge-lora")
        framework.vlm.merge_lora()
        vlm = framework.config.vlm
        framework.config = dataclasses.replace(framework.config, vlm={**vlm, "lora": {**vlm["lora"], "enabled": False}})
        merged = True
    if vlm_only:
        if not isinstance(framework, Steerable):  # the capability of having a VLM backbone
            raise ValueError(f"{ckpt} ({type(framework).__name__}) has no VLM backbone to export; drop --vlm-only")
        if framework.vlm.lora_enabled:
            raise ValueError(f"{ckpt} has LoRA adapters: add --merge-lora to export its VLM")
        with atomic_directory(out) as tmp:
            framework.vlm.save_pretrained(tmp)
        return {"parameters": sum(p.numel() for p in framework.vlm.parameters()), "merged": merged}
    policy.save_pretrained(out)
    return {"parameters": sum(p.numel() for p in framework.parameters()), "merged": merged}


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)}")
    result = export_checkpoint(args.ckpt, args.out, args.merge_lora, args.vlm_only)
    print(f"exported {args.ckpt} -> {args.out} ({result['parameters']:,} parameters, LoRA merged: {result['merged']})")
    return 0
