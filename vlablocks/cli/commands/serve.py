"""`vlablocks serve --ckpt DIR --port 8000`: serve a checkpoint over the openpi websocket protocol."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vlablocks.methods.steering.latent_arguments import add_latent_arguments

NAME = "serve"
HELP = "serve a checkpoint to robots/simulators (websocket + msgpack, openpi protocol; GET /healthz)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint directory written by save_pretrained")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 to accept remote robots)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one and prints it)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VLABLOCKS_API_KEY"),
        help="require 'Authorization: Api-Key <key>' on connect (default: $VLABLOCKS_API_KEY; unset = no key); "
        "visible in `ps`: prefer the variable or --api-key-file",
    )
    parser.add_argument("--api-key-file", help="read the API key from this file's first line (takes precedence)")
    parser.add_argument("--max-payload-mb", type=float, default=16.0, help="largest observation message accepted")
    parser.add_argument("--max-prompt-tokens", type=int, default=256, help="longest instruction accepted, in tokens")
    parser.add_argument("--max-connections", type=int, default=32, help="open connections beyond this are refused")
    parser.add_argument("--device", default="auto", help="torch device for the model: auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--weights", choices=["model", "ema"], default="model", help="ema: the moving average (trainer.ema_decay)"
    )
    add_latent_arguments(parser)


def read_api_key(given: str | None, path: str | None) -> str | None:
    """The key from --api-key-file (its first line; it takes precedence), else --api-key / $VLABLOCKS_API_KEY."""
    if path is None:
        return given or None
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--api-key-file {path}: no such file")
    key = (file.read_text().splitlines() or [""])[0].strip()
    if not key:
        raise ValueError(f"--api-key-file {path}: the file's first line is empty")
    return key


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)} (serve takes no config overrides)")
    import asyncio

    import torch

    from vlablocks.core.serving.policy import load_policy
    from vlablocks.core.serving.server import PolicyServer
    from vlablocks.methods.steering.latent_arguments import steered

    api_key = read_api_key(args.api_key, args.api_key_file)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    policy = steered(load_policy(args.ckpt, device=device, weights=args.weights), args)
    server = PolicyServer(
        policy,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_payload_mb=args.max_payload_mb,
        max_prompt_tokens=args.max_prompt_tokens,
        max_connections=args.max_connections,
    )

    async def main() -> None:
        handle = await server.start()
        meta = policy.metadata
        print(
            f"serving {args.ckpt} ({type(policy.model).__name__} on {device}, {meta['embodiment']}: "
            f"actions [{meta['action_horizon']}, {meta['action_dim']}], cameras {meta['camera_keys']}) "
            f"on ws://{server.host}:{server.port} (health: http://{server.host}:{server.port}/healthz, "
            f"API key {'required' if server.api_key else 'off'})",
            flush=True,
        )
        async with handle:
            await handle.serve_forever()

    try:
        asyncio.run(main())
    finally:
        server.close()
    return 0
