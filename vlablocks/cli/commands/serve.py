"""`vlablocks serve --ckpt DIR --port 8000`: serve a checkpoint over the openpi websocket protocol."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from vlablocks.cli.arguments import count, real
from vlablocks.methods.steering.latent_arguments import add_latent_arguments

NAME = "serve"
HELP = "serve a checkpoint to robots/simulators (websocket + msgpack, openpi protocol; GET /healthz)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint directory written by save_pretrained")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 to accept remote robots)")
    parser.add_argument(
        "--port", type=count(0, 65535), default=8000, help="TCP port (0 picks a free one and prints it)"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("VLABLOCKS_API_KEY"),
        help="require 'Authorization: Api-Key <key>' on connect (default: $VLABLOCKS_API_KEY; unset = no key); "
        "visible in `ps`: prefer the variable or --api-key-file",
    )
    parser.add_argument("--api-key-file", help="read the API key from this file's first line (takes precedence)")
    parser.add_argument(
        "--max-payload-mb", type=real(0, 4095, open_low=True), default=16.0, help="largest observation message accepted"
    )
    parser.add_argument(
        "--max-prompt-tokens", type=count(1), default=256, help="longest instruction accepted, in tokens"
    )
    parser.add_argument(
        "--max-connections",
        type=count(1),
        default=32,
        help="open connections; when all are taken a newcomer gets the slot of one idle >= 2 s, else 1013",
    )
    parser.add_argument(
        "--max-connections-per-address",
        type=count(1),
        help="connections one client IP address may hold (default: --max-connections); beyond, it can only replace "
        "one of its own idle connections",
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=real(2, 86400),
        default=60.0,
        help="a connection that sends nothing this long is closed (default 60)",
    )
    parser.add_argument("--device", default="auto", help="torch device for the model: auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--weights", choices=["model", "ema"], default="model", help="ema: the moving average (trainer.ema_decay)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compiled inference (torch.compile; CUDA graphs on a GPU), warmed up before the socket opens",
    )
    parser.add_argument(
        "--compile-mode",
        choices=["auto", "default", "reduce-overhead", "max-autotune"],
        default="auto",
        help="torch.compile mode (auto: reduce-overhead on CUDA, default elsewhere)",
    )
    parser.add_argument(
        "--prompt-bucket",
        type=count(1),
        default=32,
        help="with --compile: prompts are padded to a multiple of this many tokens, one compiled graph per bucket",
    )
    add_latent_arguments(parser)


def read_api_key(given: str | None, path: str | None) -> str | None:
    """The key from --api-key-file (its first line; it takes precedence), else --api-key / $VLABLOCKS_API_KEY."""
    if path is None:
        return given or None
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--api-key-file {path}: no such file")
    try:
        key = (file.read_text(encoding="utf-8").splitlines() or [""])[0].strip()
    except UnicodeDecodeError:
        raise ValueError(f"--api-key-file {path}: not a text file (the key is its first line, in UTF-8)") from None
    if not key:
        raise ValueError(f"--api-key-file {path}: the file's first line is empty")
    if not key.isprintable() or len(key) > 4096:
        raise ValueError(f"--api-key-file {path}: the first line must be printable text of at most 4096 characters")
    return key


def check(args: argparse.Namespace) -> str | None:
    """Every option before the checkpoint is loaded or the socket opened -> the API key."""
    from vlablocks.core.serving.server import DEFAULT_MAX_PROMPT_CHARS, check_limits, check_per_address
    from vlablocks.methods.steering.latent_arguments import check_latent_arguments

    check_limits(
        args.max_payload_mb, DEFAULT_MAX_PROMPT_CHARS, args.max_prompt_tokens, args.max_connections, args.idle_timeout_s
    )
    check_per_address(args.max_connections_per_address, args.max_connections)
    if not Path(args.ckpt).is_dir():
        raise FileNotFoundError(f"--ckpt {args.ckpt}: no such checkpoint directory")
    if args.compile and args.text_latent:
        raise ValueError("--compile and --text-latent together are not supported (steering hooks change the graph)")
    check_latent_arguments(args)
    return read_api_key(args.api_key, args.api_key_file)


def warm_up_observation(metadata: dict) -> dict:
    """A blank observation of the served shape: the compiled graph of a short prompt's bucket is built on it."""
    import numpy as np

    size = metadata["image_size"]
    height, width = (size, size) if isinstance(size, int) else size
    image = np.zeros((height, width, 3), np.uint8)
    return {
        "images": {camera: image for camera in metadata["camera_keys"]},
        "state": np.zeros(metadata["state_dim"], np.float32),
        "prompt": "warm up",
    }


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    if overrides:
        raise ValueError(f"unexpected arguments: {' '.join(overrides)} (serve takes no config overrides)")
    import asyncio

    import torch

    from vlablocks.core.serving.policy import load_policy
    from vlablocks.core.serving.server import PolicyServer
    from vlablocks.methods.steering.latent_arguments import steered

    api_key = check(args)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    loaded = load_policy(args.ckpt, device=device, weights=args.weights)
    if args.compile:
        start = time.perf_counter()
        loaded.compile(args.compile_mode, args.prompt_bucket).infer(warm_up_observation(loaded.metadata))
        print(
            f"compiled ({args.compile_mode}, prompt bucket {args.prompt_bucket}) in {time.perf_counter() - start:.0f} s"
        )
    policy = steered(loaded, args)
    server = PolicyServer(
        policy,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_payload_mb=args.max_payload_mb,
        max_prompt_tokens=args.max_prompt_tokens,
        max_connections=args.max_connections,
        idle_timeout_s=args.idle_timeout_s,
        max_connections_per_address=args.max_connections_per_address,
    )

    async def main() -> None:
        handle = await server.start()
        meta = policy.metadata
        print(
            f"serving {args.ckpt} ({type(loaded.model).__name__} on {device}, {meta['embodiment']}: "
            f"actions [{meta['action_horizon']}, {meta['action_dim']}], cameras {meta['camera_keys']}) "
            f"on {server.url} (health: {server.url.replace('ws://', 'http://')}/healthz, "
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
