"""`vlablocks demo`: the whole pipeline on a laptop CPU, end to end.

toy data (LeRobot v3) -> train a tiny QwenOFT -> serve the checkpoint (a real `vlablocks serve`
subprocess) -> closed-loop eval through the websocket client -> success rate, next to a
wrong-instruction control (proves the policy reads the instruction) and a random-policy baseline.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vlablocks.cli.arguments import count

NAME = "demo"
HELP = "end-to-end demo: toy data -> train -> serve -> closed-loop eval, printing the success rate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-yaml", default="configs/experiments/demo/qwen_oft_toy.yaml", help="experiment to train"
    )
    parser.add_argument("--episodes", type=count(1), default=1000, help="toy episodes to generate for training")
    parser.add_argument("--eval-episodes", type=count(1), default=50)
    parser.add_argument("--out", default="runs/demo", help="run directory (data under data/)")


def start_server(checkpoint: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Starts `vlablocks serve --port 0` and waits for the line naming its address."""
    handle = open(log, "w")
    command = [sys.executable, "-m", "vlablocks.cli.main", "serve", "--ckpt", str(checkpoint), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=handle, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise RuntimeError(f"the policy server exited with {process.returncode}; see {log}")
        match = re.search(r"ws://([\d.]+):(\d+)", line)
        if match:
            return process, match.group(0)
    process.kill()
    raise TimeoutError(f"the policy server did not start within 300 s; see {log}")


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    from deployment.client import PolicyClient
    from vlablocks.core.config import load_config
    from vlablocks.core.evaluation.baselines import RandomPolicy, action_bounds
    from vlablocks.core.evaluation.rollout import evaluate, played_per_chunk
    from vlablocks.core.training.train import train
    from vlablocks.tools.toy.toy import ToyTabletopEnv
    from vlablocks.tools.toy.toy_dataset import write_toy_dataset

    out = Path(args.out)
    data = Path("data") / f"toy_demo_{args.episodes}"
    if not (data / "meta" / "info.json").is_file():
        start = time.perf_counter()
        write_toy_dataset(data, args.episodes, seed=0, overwrite=True)
        print(f"[demo] wrote {args.episodes} toy episodes to {data} in {time.perf_counter() - start:.0f} s")
    experiment = load_config(args.config_yaml, [f"dataset.root={data}", f"run_dir={out / 'train'}", *overrides])
    shutil.rmtree(out / "train", ignore_errors=True)  # the demo's own run: each demo trains afresh
    start = time.perf_counter()
    result = train(experiment)
    print(f"[demo] trained in {time.perf_counter() - start:.0f} s; final loss {result['losses'][-1]:.4f}")

    server, address = start_server(result["checkpoint"], out / "server.log")
    try:
        host, port = address.removeprefix("ws://").split(":")
        client = PolicyClient(host, int(port))
        env = ToyTabletopEnv()
        horizon, played = client.metadata["action_horizon"], played_per_chunk(client.metadata)
        runs = {
            "policy": evaluate(env, client, args.eval_episodes, 10_000, out / "eval", played),
            "wrong instruction": evaluate(
                env, client, args.eval_episodes, 10_000, out / "eval_wrong", played, wrong_instruction=True
            ),
            "random policy": evaluate(
                env,
                RandomPolicy(*action_bounds(env), horizon, seed=0),
                args.eval_episodes,
                10_000,
                out / "eval_random",
                horizon,
            ),
        }
        client.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("\n| run | success | 95% CI |\n|---|---|---|")
    for name, summary in runs.items():
        low, high = summary["ci95"]
        print(f"| {name} | {summary['success_rate']:.0%} | {low:.0%}-{high:.0%} |")
    print(
        f"\n[demo] success rate {runs['policy']['success_rate']:.0%} over {args.eval_episodes} toy episodes; "
        f"loss curve {out / 'train' / 'loss_curve.png'}, videos {out / 'eval'}"
    )
    return 0
