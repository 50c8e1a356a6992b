"""A LeRobot policy checkpoint (ACT, Diffusion Policy, ... trained by LeRobot's own `lerobot_train` script) as a
policy of vlablocks' rollout engine, so the peers run the same evaluation loop on the same seeds:

    vlablocks eval --env metaworld --policy lerobot:runs/metaworld/lerobot_act/checkpoints/last/pretrained_model \
        --tasks mt10 --episodes-per-task 10

`infer(obs)` turns the env observation (sample.py contract) into LeRobot's batch (`observation.images.<camera>`
float [1, 3, H, W] in 0..1, `observation.state` [1, S], `task`), runs the checkpoint's own pre-processor,
`select_action` (LeRobot's action queue: one action per call, a new chunk when the queue is empty) and
post-processor -> {"actions": [1, D]}. `reset()` empties the queue at each episode's start, so one adapter drives
one env at a time (`--num-envs 1`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PREFIX = "lerobot:"


class LeRobotPolicyAdapter:
    """LeRobot `PreTrainedPolicy` + its saved processors behind `infer(obs) -> {"actions": [1, D]}` and `reset()`."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a LeRobot policy checkpoint (no config.json); pass the pretrained_model folder of "
                f"a lerobot_train run, e.g. OUT/checkpoints/last/pretrained_model"
            )
        config = PreTrainedConfig.from_pretrained(path)
        config.device = device
        self.policy = get_policy_class(config.type).from_pretrained(path, config=config)
        self.policy.eval()
        self.preprocessor, self.postprocessor = make_pre_post_processors(
            config, pretrained_path=str(path), preprocessor_overrides={"device_processor": {"device": device}}
        )
        self.image_keys = [key for key in config.input_features if key.startswith("observation.image")]
        self.state_dim = int(config.input_features["observation.state"].shape[0])
        # for check_request: the env's camera names that the checkpoint's image keys end with
        self.metadata = {
            "camera_keys": [key.split(".")[-1] for key in self.image_keys],
            "state_dim": self.state_dim,
            "action_horizon": 1,
        }

    def reset(self) -> None:
        self.policy.reset()

    def batch(self, obs: dict) -> dict:
        """An env observation -> LeRobot's raw batch of one (before the checkpoint's pre-processor)."""
        batch: dict = {"task": [obs["prompt"]]}
        for key in self.image_keys:
            image = np.ascontiguousarray(obs["images"][key.split(".")[-1]])
            batch[key] = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
        batch["observation.state"] = torch.as_tensor(np.asarray(obs["state"], np.float32))[None]
        return batch

    @torch.no_grad()
    def infer(self, obs: dict) -> dict:
        action = self.postprocessor(self.policy.select_action(self.preprocessor(self.batch(obs))))
        return {"actions": action.detach().cpu().numpy().astype(np.float32).reshape(1, -1)}
