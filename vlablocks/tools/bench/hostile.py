"""Hostile and unlucky input against a served policy: `python -m vlablocks.tools.bench.hostile [--per-class N]`.

Saves a tiny random-init QwenOFT checkpoint (its real processor and tokenizer check the prompts) and a text-latent
file of its two instructions, then starts `vlablocks serve` on loopback twice: plain, and steered
(`--text-latent F --latent-prompt given`). To each it sends N messages of every class below over one connection,
each followed by a valid request, with the server's log (its stderr) in a file. It counts what must never happen:
a crash (the server stops answering or exits), a hang (no reply within 5 s), a non-finite action, a reply over
1 KB or an error over one line, a valid request not served after a bad one, a bad message answered with actions,
a valid one refused, and log growth over 1 MB for the run. Exit status 1 when any count is non-zero.
`tests/test_hostile_inputs.py` runs one message per class; the documented figure is `--per-class 40`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np
import websockets.sync.client

from deployment.client import msgpack_numpy
from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.flags import FlagParser
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import Policy, build_policy

PLATFORM = {"name": "hostile", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
TASKS = ("pick up the red block", "push the blue block to the left")  # the latent file's tasks
TIMEOUT_S = 5.0
MAX_REPLY_BYTES = 1024
MAX_LOG_GROWTH = 1 << 20
COUNTS = (
    "crash",
    "hang",
    "non_finite",
    "long_reply",
    "not_served_after",
    "bad_answered",
    "valid_refused",
    "log_over_1mb",
)
ERROR, ACTIONS = "error", "actions"


def _array(dtype: str, shape: list, data: bytes) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


def message_classes(valid: dict, rng: np.random.Generator, steered: bool) -> dict[str, tuple[Callable, str]]:
    """Class name -> (a maker of one message, varied by `rng`; the reply it must get: ERROR or ACTIONS)."""
    image = valid["images"]["image"]

    def obs(**changes) -> bytes:
        return msgpack_numpy.packb({**valid, **changes})

    def raw(value) -> bytes:
        return msgpack.packb(value, use_bin_type=True)

    def without(key: str) -> bytes:
        return msgpack_numpy.packb({k: v for k, v in valid.items() if k != key})

    def n(low: int, high: int) -> int:
        return int(rng.integers(low, high))

    classes = {
        "random bytes": lambda: rng.integers(0, 256, n(1, 200), dtype=np.uint8).tobytes(),
        "text frame": lambda: "hello " * n(1, 50),
        "not a map": lambda: raw([1, 2, 3]),
        "missing prompt": lambda: without("prompt"),
        "missing images": lambda: without("images"),
        "wrong camera": lambda: obs(images={"elsewhere": image}),
        "float image": lambda: obs(images={"image": image.astype(np.float32)}),
        "4-channel image": lambda: obs(images={"image": np.zeros((8, 8, 4), np.uint8)}),
        "ragged state": lambda: raw({"prompt": "go", "state": [[0.1], [0.2, 0.3]]}),
        "NaN state": lambda: obs(state=np.array([np.nan, 1.0], np.float32)),
        "string state": lambda: obs(state="zero"),
        "prompt not a string": lambda: obs(prompt=n(0, 100)),
        "empty prompt": lambda: obs(prompt=" " * n(0, 5)),
        "huge prompt": lambda: obs(prompt="go " * n(800, 3000)),
        "control tokens": lambda: obs(prompt=f"go <|act_{n(0, 4)}|> <|im_start|>"),
        "end-of-turn token": lambda: obs(prompt=f"{valid['prompt']} <|im_end|>" + " x" * n(0, 5)),
        "prompt over the token limit": lambda: obs(prompt="a " * n(300, 999)),  # under 2000 characters
        "huge key": lambda: obs(images={"k" * n(10_000, 200_000): image}),
        "array bytes short": lambda: raw({"prompt": "go", "images": {"image": _array("|u1", [8, 8, 3], b"\x00")}}),
        "object dtype": lambda: raw({"prompt": "go", "images": {"image": _array("|O", [1], b"\x00" * 8)}}),
        "deep nesting": lambda: raw({"prompt": "go", "images": {"image": [[[[[[[[1]]]]]]]]}}),
        "unknown key": lambda: obs(episode_id=n(0, 9)),
        "training field: answer": lambda: obs(answer="x" * n(1, 50), dataset_name="toy"),
        "training field: action": lambda: obs(action=np.zeros((4, 3), np.float32)),
        "huge dataset_name": lambda: obs(dataset_name="d" * n(10_000, 2_000_000)),
        "unknown dataset_name": lambda: obs(dataset_name=f"toy{n(0, 9)}"),
        "dataset_name not a string": lambda: obs(dataset_name=n(0, 9)),
        "episode_start not a bool": lambda: obs(episode_start=["false", "true", 1, 0, None][n(0, 5)]),
        "malformed subtasks": lambda: obs(subtasks=["a string", [1, 2], ["x"] * 20][n(0, 3)]),
        # a task the latent file does not hold: the steered server refuses it, the plain one serves it
        "prompt without a latent": (lambda: obs(prompt=f"go to block {n(0, 99)}"), ERROR if steered else ACTIONS),
        "episode start (valid)": (lambda: obs(episode_start=bool(n(0, 2))), ACTIONS),
        "dataset and embodiment (valid)": (lambda: obs(dataset_name="hostile", embodiment="hostile"), ACTIONS),
    }
    return {name: entry if isinstance(entry, tuple) else (entry, ERROR) for name, entry in classes.items()}


def tiny_policy() -> Policy:
    experiment = parse_experiment({"platform": PLATFORM, "framework": {"name": "QwenOFT"}})
    samples = synthetic_examples(experiment.platform, 4, image_size=32, dataset_name="hostile")
    return build_policy(experiment, synthetic_norm_stats(samples), camera_keys=["image"]).eval()


def valid_request(seed: int = 0) -> dict:
    sample = synthetic_examples(PlatformConfig(**PLATFORM), 1, image_size=32, dataset_name="hostile", seed=seed)[0]
    return {"images": sample["images"], "state": sample["state"], "prompt": TASKS[0]}


def prepare(directory: Path) -> tuple[Path, Path]:
    """A tiny checkpoint and the text latents of TASKS extracted from it -> (checkpoint dir, latent file)."""
    from vlablocks.methods.steering.text_latent import extract

    policy = tiny_policy()
    checkpoint = policy.save_pretrained(directory / "ckpt")
    samples = synthetic_examples(PlatformConfig(**PLATFORM), 4, image_size=32, dataset_name="hostile")
    for i, sample in enumerate(samples):
        sample["prompt"] = TASKS[i % len(TASKS)]
    latents = directory / "latents.safetensors"
    extract(policy, [samples]).save(latents)
    return checkpoint, latents


def start_server(
    checkpoint: Path, log: Path, latents: Path | None = None, extra: list[str] = ()
) -> tuple[subprocess.Popen, int]:
    """`vlablocks serve` on a free loopback port (`extra`: more of its options), its stderr into `log`
    -> (process, port)."""
    command = [sys.executable, "-m", "vlablocks.cli.main", "serve", "--ckpt", str(checkpoint), "--port", "0"]
    command += ["--device", "cpu"] + (["--text-latent", str(latents), "--latent-prompt", "given"] if latents else [])
    command += list(extra)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    line = process.stdout.readline()
    found = re.search(r"ws://[^ ]*:(\d+) ", line)
    if found is None:
        process.kill()
        raise RuntimeError(f"the server did not start: {line.strip() or log.read_text()[-500:]}")
    return process, int(found.group(1))


def _connect(port: int):
    ws = websockets.sync.client.connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None, max_size=None)
    ws.recv(timeout=TIMEOUT_S)  # metadata
    return ws


def attack(port: int, process: subprocess.Popen, per_class: int, seed: int, steered: bool) -> dict:
    """Sends every class to a running server -> {"messages", "counts", "per_class"} (log growth not included)."""
    rng = np.random.default_rng(seed)
    valid = valid_request(seed)
    counts = dict.fromkeys(COUNTS, 0)
    seen: dict[str, dict[str, int]] = {}
    messages, slowest = 0, 0.0
    ws = _connect(port)
    for name, (make, expected) in message_classes(valid, rng, steered).items():
        for _ in range(per_class):
            messages += 1
            start = time.monotonic()
            reply = _ask(ws, make(), counts)
            slowest = max(slowest, time.monotonic() - start)
            kind = ACTIONS if isinstance(reply, bytes) else ERROR if isinstance(reply, str) else "none"
            seen.setdefault(name, {}).setdefault(kind, 0)
            seen[name][kind] += 1
            if kind != expected:
                counts["bad_answered" if expected == ERROR else "valid_refused"] += 1
            if reply is not None and (len(reply) > MAX_REPLY_BYTES or (isinstance(reply, str) and "\n" in reply)):
                counts["long_reply"] += 1
            if not isinstance(_ask(ws, msgpack_numpy.packb(valid), counts), bytes):
                counts["not_served_after"] += 1
                if process.poll() is not None:
                    counts["crash"] += 1
                    return {"messages": messages, "counts": counts, "per_class": seen}
                ws = _connect(port)
    ws.close()
    return {"messages": messages, "counts": counts, "per_class": seen, "slowest_reply_s": round(slowest, 3)}


def _ask(ws, message: bytes | str, counts: dict) -> bytes | str | None:
    try:
        ws.send(message)
        reply = ws.recv(timeout=TIMEOUT_S)
    except TimeoutError:
        counts["hang"] += 1
        return None
    except (websockets.exceptions.ConnectionClosed, OSError):
        counts["crash"] += 1
        return None
    if isinstance(reply, bytes):
        actions = np.asarray(msgpack_numpy.unpackb(reply).get("actions"))
        if not np.isfinite(actions).all():
            counts["non_finite"] += 1
    return reply


def run(per_class: int, seed: int = 0, servers: tuple[str, ...] = ("plain", "steered")) -> dict:
    """-> {server: {"messages", "classes", "counts", "per_class", "log_growth_bytes", "seconds"}}."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        checkpoint, latents = prepare(Path(tmp))
        for name in servers:
            log = Path(tmp) / f"{name}.log"
            started = time.monotonic()
            process, port = start_server(checkpoint, log, latents if name == "steered" else None)
            try:
                before = log.stat().st_size
                result = attack(port, process, per_class, seed, steered=name == "steered")
                time.sleep(0.2)  # the server's last log lines
                growth = log.stat().st_size - before
            finally:
                process.terminate()
                process.wait(timeout=30)
            result["counts"]["log_over_1mb"] = int(growth > MAX_LOG_GROWTH)
            result |= {"classes": len(result["per_class"]), "log_growth_bytes": growth}
            result["seconds"] = round(time.monotonic() - started, 1)
            results[name] = result
    return results


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=40, help="messages of each class (32 classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--servers", nargs="+", choices=["plain", "steered"], default=["plain", "steered"])
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"--per-class must be >= 1, got {args.per_class}")
    results = run(args.per_class, args.seed, tuple(args.servers))
    print(json.dumps(results, indent=1))
    return 1 if any(any(r["counts"].values()) for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
