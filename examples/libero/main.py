"""Evaluates a served vlablocks policy on a LIBERO task suite; runs inside a LIBERO install, not in vlablocks.

LIBERO's scene assets cannot be installed next to vlablocks here, so this script runs in LIBERO's own Python
(>= 3.11, with `pip install <vlablocks>/deployment/client pyyaml omegaconf` and the vlablocks checkout on
PYTHONPATH: it imports vlablocks' rollout engine, which needs no torch) and queries `vlablocks serve` over the
websocket. Modelled on openpi's examples/libero/main.py: per task, `--trials` episodes from LIBERO's fixed
initial states; `LiberoTaskEnv` adapts a task to the eval-env interface (reset to initial state `seed` after
`--wait-steps` no-op steps for objects to settle; done when LIBERO reports the goal reached or the suite's step
budget runs out), and vlablocks' rollout engine (vlablocks/core/evaluation/rollout.py) plays the chunks, as
`vlablocks eval` does: the server queried per env, `--open-loop` actions played per chunk.

    # GPU host:   vlablocks serve --ckpt runs/qwen_oft_libero/checkpoints/step_30000 --host 0.0.0.0 --port 8000
    # LIBERO env: PYTHONPATH=<vlablocks> python examples/libero/main.py --host GPU_HOST --port 8000 --task-suite libero_spatial

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
    from vlablocks_client import PolicyClient, resize_with_pad
except ImportError:  # run from a vlablocks checkout, where the client is `deployment.client`
    from deployment.client import PolicyClient, resize_with_pad

from vlablocks.core.envs.vector import InProcessEnvs
from vlablocks.core.evaluation.rollout import PolicyActor, played_per_chunk, run_episodes
from vlablocks.core.evaluation.summary import success_summary

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


class LiberoTaskEnv:
    """One LIBERO task as an eval env of the rollout engine: `reset(seed)` starts from initial state `seed` (after
    `wait_steps` no-op steps), observations are the server's requests (`wire_observation`), an episode ends when
    LIBERO reports the goal reached (success) or after `max_steps` policy steps."""

    def __init__(self, env, initial_states, prompt: str, meta: dict, max_steps: int, wait_steps: int, rotate: bool):
        self.env, self.initial_states, self.prompt, self.meta = env, initial_states, prompt, meta
        self.max_steps, self.wait_steps, self.rotate = max_steps, wait_steps, rotate
        self.steps = 0

    def request(self, obs: dict) -> dict:
        return wire_observation(obs, self.meta["camera_keys"], self.meta["image_size"], self.prompt, self.rotate)

    def reset(self, seed: int) -> dict:
        self.env.reset()
        obs = self.env.set_init_state(self.initial_states[seed])
        for _ in range(self.wait_steps):
            obs, _, _, _ = self.env.step(NOOP_ACTION)
        self.steps = 0
        return self.request(obs)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]:
        """action [7] -> (request, reward, done, {"success"})."""
        obs, _, done, _ = self.env.step(np.asarray(action, dtype=np.float64).tolist())
        self.steps += 1
        return self.request(obs), float(done), bool(done) or self.steps >= self.max_steps, {"success": bool(done)}

    def wrong_instruction(self) -> str:
        raise NotImplementedError("LIBERO has no wrong-instruction control here")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = FlagParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--task-suite", default="libero_spatial", choices=sorted(MAX_STEPS))
    parser.add_argument("--trials", type=int, default=50, help="episodes per task (LIBERO has 50 initial states)")
    parser.add_argument(
        "--open-loop",
        type=int,
        default=None,
        help="actions played per chunk (default: the server's n_action_steps, else the whole chunk)",
    )
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
    actor, played = PolicyActor(client), args.open_loop or played_per_chunk(meta)
    suite = benchmark.get_benchmark_dict()[args.task_suite]()
    per_task = []
    for task_id in range(suite.n_tasks):
        task = suite.get_task(task_id)
        initial_states = suite.get_task_init_states(task_id)
        bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=ENV_RESOLUTION, camera_widths=ENV_RESOLUTION)
        env.seed(args.seed)
        task_env = LiberoTaskEnv(
            env, initial_states, task.language, meta, MAX_STEPS[args.task_suite], args.wait_steps, not args.no_rotate
        )
        trials = min(args.trials, len(initial_states))
        start = time.perf_counter()
        episodes = run_episodes(
            InProcessEnvs.wrap([task_env]), range(trials), actor, played, videos=trials if args.videos else 0
        )
        env.close()
        for episode in episodes:
            logger.info("task %d trial %d: %s in %d steps", task_id, episode.seed, episode.success, episode.steps)
            if args.videos:
                import imageio

                name = f"task{task_id:02d}_trial{episode.seed:02d}_{'success' if episode.success else 'failure'}.mp4"
                imageio.mimwrite(out / name, episode.frames, fps=10)
        successes = sum(episode.success for episode in episodes)
        per_task.append({"task": task.language, **success_summary(successes, trials)})
        logger.info(
            "task %d (%s): %d/%d in %.0f s", task_id, task.language, successes, trials, time.perf_counter() - start
        )
    total = sum(t["successes"] for t in per_task)
    episodes = sum(t["episodes"] for t in per_task)
    summary = {"suite": args.task_suite, **success_summary(total, episodes), "per_task": per_task}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"{args.task_suite}: success rate {summary['success_rate']:.1%} ({total}/{episodes}); {out / 'summary.json'}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
