"""Hostile and unlucky input against a served policy: `python -m vlablocks.tools.bench.hostile [--per-class N]`.

Serves a tiny random-init QwenOFT (its real processor and tokenizer check the prompts) on loopback and sends
N messages of each class below over one connection, each followed by a valid request. It counts what must
never happen: a crash (the server stops answering), a hang (no reply within 5 s), a non-finite action, an
error reply over 1 KB or over one line, a valid request not served after a bad one, and a bad message
answered with actions. Exit status 1 when any count is non-zero. `tests/test_hostile_inputs.py` runs one
message per class; the full run (`--per-class 60`: 1,200 messages) is the documented figure.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import msgpack
import numpy as np
import websockets.sync.client

from deployment.client import msgpack_numpy
from vlablocks.core.config import PlatformConfig, parse_experiment
from vlablocks.core.flags import FlagParser
from vlablocks.core.framework.synthetic import synthetic_examples, synthetic_norm_stats
from vlablocks.core.policy.policy import Policy, build_policy
from vlablocks.core.serving.server import running_server

PLATFORM = {"name": "hostile", "action_horizon": 4, "action_dim": 3, "state_dim": 2}
TIMEOUT_S = 5.0
MAX_ERROR_BYTES = 1024


def _array(dtype: str, shape: list, data: bytes) -> dict:
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}


def message_classes(valid: dict, rng: np.random.Generator) -> dict[str, Callable[[], bytes | str]]:
    """Class name -> a maker of one hostile message (varied by `rng`)."""
    image = valid["images"]["image"]

    def obs(**changes) -> bytes:
        return msgpack_numpy.packb({**valid, **changes})

    def raw(value) -> bytes:
        return msgpack.packb(value, use_bin_type=True)

    return {
        "random bytes": lambda: rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes(),
        "text frame": lambda: "hello " * int(rng.integers(1, 50)),
        "not a map": lambda: raw([1, 2, 3]),
        "missing prompt": lambda: msgpack_numpy.packb({k: v for k, v in valid.items() if k != "prompt"}),
        "missing images": lambda: msgpack_numpy.packb({k: v for k, v in valid.items() if k != "images"}),
        "wrong camera": lambda: obs(images={"elsewhere": image}),
        "float image": lambda: obs(images={"image": image.astype(np.float32)}),
        "4-channel image": lambda: obs(images={"image": np.zeros((8, 8, 4), np.uint8)}),
        "ragged state": lambda: raw({"prompt": "go", "state": [[0.1], [0.2, 0.3]]}),
        "NaN state": lambda: obs(state=np.array([np.nan, 1.0], np.float32)),
        "string state": lambda: obs(state="zero"),
        "prompt not a string": lambda: obs(prompt=int(rng.integers(0, 100))),
        "empty prompt": lambda: obs(prompt=" " * int(rng.integers(0, 5))),
        "huge prompt": lambda: obs(prompt="go " * int(rng.integers(800, 3000))),
        "control tokens": lambda: obs(prompt=f"go <|act_{int(rng.integers(0, 4))}|> <|im_start|>"),
        "huge key": lambda: obs(images={"k" * int(rng.integers(10_000, 200_000)): image}),
        "array bytes short": lambda: raw({"prompt": "go", "images": {"image": _array("|u1", [8, 8, 3], b"\x00")}}),
        "object dtype": lambda: raw({"prompt": "go", "images": {"image": _array("|O", [1], b"\x00" * 8)}}),
        "deep nesting": lambda: raw({"prompt": "go", "images": {"image": [[[[[[[[1]]]]]]]]}}),
        "extra keys (valid)": lambda: obs(episode_id=int(rng.integers(0, 9)), dataset_name="hostile"),
    }


def tiny_policy() -> Policy:
    experiment = parse_experiment({"platform": PLATFORM, "framework": {"name": "QwenOFT"}})
    samples = synthetic_examples(experiment.platform, 4, image_size=32, dataset_name="hostile")
    return build_policy(experiment, synthetic_norm_stats(samples), camera_keys=["image"]).eval()


def run(per_class: int, seed: int = 0) -> dict:
    """-> {"messages", "counts": {what must never happen: n}, "per_class": {class: replies seen}}."""
    rng = np.random.default_rng(seed)
    policy = tiny_policy()
    sample = synthetic_examples(PlatformConfig(**PLATFORM), 1, image_size=32, dataset_name="hostile")[0]
    valid = {key: sample[key] for key in ("images", "state", "prompt")}
    counts = dict.fromkeys(("crash", "hang", "non_finite", "long_error", "not_served_after", "bad_answered"), 0)
    seen: dict[str, dict[str, int]] = {}
    messages = 0
    with running_server(policy) as server:
        ws = websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", compression=None, proxy=None)
        ws.recv(timeout=TIMEOUT_S)  # metadata
        for name, make in message_classes(valid, rng).items():
            for _ in range(per_class):
                messages += 1
                reply = _ask(ws, make(), counts)
                kind = "actions" if isinstance(reply, bytes) else "error" if isinstance(reply, str) else "none"
                seen.setdefault(name, {}).setdefault(kind, 0)
                seen[name][kind] += 1
                if isinstance(reply, str) and (len(reply.encode()) > MAX_ERROR_BYTES or "\n" in reply):
                    counts["long_error"] += 1
                if isinstance(reply, bytes) and not name.endswith("(valid)"):
                    counts["bad_answered"] += 1
                after = _ask(ws, msgpack_numpy.packb(valid), counts)
                if not isinstance(after, bytes):
                    counts["not_served_after"] += 1
                    ws = websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", compression=None, proxy=None)
                    ws.recv(timeout=TIMEOUT_S)
        ws.close()
    return {"messages": messages, "counts": counts, "per_class": seen}


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


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=60, help="messages of each class (20 classes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run(args.per_class, args.seed)
    print(json.dumps(result, indent=1))
    return 1 if any(result["counts"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
