"""Evaluates a served vlablocks policy on a LIBERO task suite; runs inside a LIBERO install, not in vlablocks.

LIBERO's scene assets cannot be installed next to vlablocks here, so this client runs in LIBERO's own Python
(>= 3.10, with `pip install <vlablocks>/deployment/client`) and queries `vlablocks serve` over the websocket.
Modelled on openpi's examples/libero/main.py: per task, `--trials` episodes from LIBERO's fixed initial
states; each episode first waits `--wait-steps` no-op steps for objects to settle, then plays chunks through
`ActionChunkBroker` until LIBERO reports the goal reached (`done`) or the suite's step budget runs out.

    # GPU host:   vlablocks serve --ckpt runs/qwen_oft_libero/checkpoints/step_30000 --host 0.0.0.0 --port 8000
    # LIBERO env: python examples/libero/main.py --host GPU_HOST --port 8000 --task-suite libero_spatial

Observation sent per query (the server's metadata says which camera keys and image size it wants):
    images:  {camera_keys[0]: agentview, camera_keys[1]: wrist}, uint8 [H, W, 3], rotated 180 degrees as in
             openpi's LeRobot conversion of the LIBERO demos (`--no-rotate` for data stored upright)
    state:   float32 [8] = eef position (3), eef axis-angle (3), gripper finger positions (2)
    prompt:  the task's language instruction
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from vlablocks.core.flags import FlagParser

try:
    from vlablocks_client import ActionChunkBroker, PolicyClient, resize_with_pad
except ImportError:  # run from a vlablocks checkout, where the client is `deployment.client`
    from deployment.client import ActionChunkBroker, PolicyClient, resize_with_pad

logger = logging.getLogger("libero_eval")

NOOP_ACTION = [0.0] * 6 + [-1.0]  # no motion, gripper open: played while the scene settles
ENV_RESOLUTION = 256  # LIBERO camera renders, as in the training datasets
# Step budgets per suite: the longest training demonstration of the suite, plus margin (openpi's values).
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """quat: [4] (x, y, z, w), robosuite's order -> [3] axis * angle (radians), angle in [0, pi] for w >= 0."""
    x, y, z, w = (float(q) for q in quat)
    w = min(1.0, max(-1.0, w))
    sin_half = math.sqrt(1.0 - w * w)
    if math.isclose(sin_half, 0.0):
        return np.zeros(3, dtype=np.float32)
    return (np.array([x, y, z]) * 2.0 * math.acos(w) / sin_half).astype(np.float32)


def libero_state(obs: dict) -> np.ndarray:
    """LIBERO obs -> float32 [8]: eef position, eef axis-angle, the two gripper finger positions."""
    return np.concatenate(
        [obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]), obs["robot0_gripper_qpos"]]
    ).astype(np.float32)


def image_hw(image_size: int | list[int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def wire_observation(
    obs: dict, camera_keys: list[str], image_size: int | list[int], prompt: str, rotate: bool = True
) -> dict:
    """LIBERO obs -> the server's observation: views rotated 180 degrees (`rotate`) and resized with padding."""
    views = [obs["agentview_image"], obs["robot0_eye_in_hand_image"]]
    if not 1 <= len(camera_keys) <= len(views):
        raise ValueError(f"LIBERO gives {len(views)} views (agentview, wrist); the policy wants {camera_keys}")
    height, width = image_hw(image_size)
    images = {
        key: resize_with_pad(np.ascontiguousarray(view[::-1, ::-1] if rotate else view), height, width)
        for key, view in zip(camera_keys, views)
    }
    return {"images": images, "state": libero_state(obs), "prompt": prompt}


def run_episode(env, initial_state, broker, meta: dict, prompt: str, args: argparse.Namespace):
    """One episode from a fixed initial state -> (success, agentview frames as sent)."""
    env.reset()
    broker.reset()
    obs = env.set_init_state(initial_state)
    for _ in range(args.wait_steps):
        obs, _, _, _ = env.step(NOOP_ACTION)
    frames = []
    for _ in range(MAX_STEPS[args.task_suite]):
        request = wire_observation(obs, meta["camera_keys"], meta["image_size"], prompt, not args.no_rotate)
        frames.append(request["images"][meta["camera_keys"][0]])
        action = np.asarray(broker.infer(request)["actions"], dtype=np.float64)
        obs, _, done, _ = env.step(action.tolist())
        if done:
            return True, frames
    return False, frames


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = FlagParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--task-suite", default="libero_spatial", choices=sorted(MAX_STEPS))
    parser.add_argument("--trials", type=int, default=50, help="episodes per task (LIBERO has 50 initial states)")
    parser.add_argument("--open-loop", type=int, default=None, help="actions played per chunk (default: all)")
    parser.add_argument("--wait-steps", type=int, default=10, help="no-op steps while objects settle")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--no-rotate", action="store_true", help="send views unrotated (for data not rotated 180 degrees like openpi's)"
    )
    parser.add_argument("--out", default="runs/libero_eval", help="summary.json and, with --videos, MP4s")
    parser.add_argument("--videos", action="store_true", help="save every episode's agentview as MP4 (imageio)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = PolicyClient(args.host, args.port, api_key=args.api_key)
    meta = client.metadata
    broker = ActionChunkBroker(client, args.open_loop or meta["action_horizon"])
    suite = benchmark.get_benchmark_dict()[args.task_suite]()
    per_task = []
    for task_id in range(suite.n_tasks):
        task = suite.get_task(task_id)
        initial_states = suite.get_task_init_states(task_id)
        bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=ENV_RESOLUTION, camera_widths=ENV_RESOLUTION)
        env.seed(args.seed)
        successes = 0
        for trial in range(min(args.trials, len(initial_states))):
            start = time.perf_counter()
            success, frames = run_episode(env, initial_states[trial], broker, meta, task.language, args)
            successes += success
            logger.info("task %d trial %d: %s in %.0f s", task_id, trial, success, time.perf_counter() - start)
            if args.videos:
                import imageio

                name = f"task{task_id:02d}_trial{trial:02d}_{'success' if success else 'failure'}.mp4"
                imageio.mimwrite(out / name, frames, fps=10)
        env.close()
        trials = min(args.trials, len(initial_states))
        per_task.append({"task": task.language, "successes": successes, "episodes": trials})
        logger.info("task %d (%s): %d/%d", task_id, task.language, successes, trials)
    total = sum(t["successes"] for t in per_task)
    episodes = sum(t["episodes"] for t in per_task)
    summary = {"suite": args.task_suite, "successes": total, "episodes": episodes, "per_task": per_task}
    summary["success_rate"] = total / max(episodes, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{args.task_suite}: success rate {summary['success_rate']:.1%} ({total}/{episodes}); {out / 'summary.json'}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
