"""N copies of a registered eval env behind one interface, so one policy call can serve every live episode.

    envs = make_vector_env({"name": "toy"}, count=32)        # in-process (numpy envs)
    envs = make_vector_env({"name": "pusht"}, count=8, workers=True)   # one worker process per env
    observations = envs.reset([seed_0, ..., seed_31])     # or fewer seeds: the first envs only
    results = envs.step({i: action_i for the live i})        # -> {i: (obs, reward, done, info)}

`InProcessEnvs` steps plain Python envs in a loop (the toy env costs microseconds a step). `WorkerEnvs` runs
each env in its own process, so slow simulators (gym-aloha's MuJoCo, pusht's pymunk) step in parallel;
messages are msgpack (numpy arrays as raw bytes, never pickle), the commands are `reset`, `step`,
`wrong_instruction` and `close`.
"""

from __future__ import annotations

import inspect
import multiprocessing as mp
from typing import Any

import numpy as np

from deployment.client.msgpack_numpy import packb, unpackb
from vlablocks.core.build import build
from vlablocks.core.registry import EVAL_ENVS

StepResult = tuple[dict, float, bool, dict]


class InProcessEnvs:
    """`count` envs built from one EVAL_ENVS section, stepped one after another in this process."""

    def __init__(self, env_config: dict, count: int) -> None:
        if count < 1:
            raise ValueError(f"a vector env needs count >= 1, got {count}")
        self._set_envs([build(EVAL_ENVS, env_config) for _ in range(count)])

    @classmethod
    def wrap(cls, envs: list) -> InProcessEnvs:
        """Envs built already (of one class) behind the vector interface, e.g. `InProcessEnvs.wrap([env])`."""
        if not envs:
            raise ValueError("a vector env needs count >= 1, got 0")
        vector = cls.__new__(cls)
        vector._set_envs(list(envs))
        return vector

    def _set_envs(self, envs: list) -> None:
        self.envs = envs
        self.can_skip_render = "observe" in inspect.signature(envs[0].step).parameters  # one env class

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, seeds: list[int]) -> list[dict]:
        """seeds: one per env to reset, envs 0 .. len(seeds) - 1 (1 <= len <= count) -> their first observations."""
        self._check_count(seeds)
        return [env.reset(seed=int(seed)) for env, seed in zip(self.envs, seeds)]

    def step(self, actions: dict[int, np.ndarray], observe: bool = True) -> dict[int, StepResult]:
        """actions: {env index: action [D]} for the envs to step -> {index: (obs, reward, done, info)}

        observe=False: envs that can skip rendering (the toy env) return obs None; the others observe anyway.
        """
        options = {"observe": False} if not observe and self.can_skip_render else {}
        return {i: self.envs[i].step(action, **options) for i, action in actions.items()}

    def wrong_instruction(self, index: int) -> str:
        return self.envs[index].wrong_instruction()

    def close(self) -> None:
        for env in self.envs:
            close = getattr(env, "close", None)
            if close is not None:
                close()

    def _check_count(self, seeds: list[int]) -> None:
        if not 1 <= len(seeds) <= len(self):
            raise ValueError(f"reset takes one seed per env to reset: {len(self)} envs, got {len(seeds)} seeds")


def _worker(connection, env_config: dict) -> None:
    """One env in its own process: answers msgpack commands until `close` (or the parent goes away)."""
    env = build(EVAL_ENVS, env_config)
    try:
        while True:
            command, argument = unpackb(connection.recv_bytes())
            if command == "reset":
                reply = env.reset(seed=argument)
            elif command == "step":
                obs, reward, done, info = env.step(np.asarray(argument, np.float32))
                reply = [obs, reward, done, {k: v for k, v in info.items() if _plain(v)}]
            elif command == "wrong_instruction":
                reply = env.wrong_instruction()
            else:  # close
                break
            connection.send_bytes(packb(reply))
    except EOFError:
        pass
    finally:
        close = getattr(env, "close", None)
        if close is not None:
            close()


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, np.ndarray, np.generic))


class WorkerEnvs(InProcessEnvs):
    """`count` envs, each in a worker process (spawned: no state inherited), stepped in parallel."""

    def __init__(self, env_config: dict, count: int) -> None:
        if count < 1:
            raise ValueError(f"a vector env needs count >= 1, got {count}")
        context = mp.get_context("spawn")
        self.connections, self.processes = [], []
        for _ in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=_worker, args=(child, env_config), daemon=True)
            process.start()
            self.connections.append(parent)
            self.processes.append(process)

    def __len__(self) -> int:
        return len(self.connections)

    def reset(self, seeds: list[int]) -> list[dict]:
        self._check_count(seeds)
        for connection, seed in zip(self.connections, seeds):
            connection.send_bytes(packb(["reset", int(seed)]))
        return [unpackb(connection.recv_bytes()) for connection in self.connections[: len(seeds)]]

    def step(self, actions: dict[int, np.ndarray], observe: bool = True) -> dict[int, StepResult]:
        for i, action in actions.items():  # all sent first: the workers step at the same time
            self.connections[i].send_bytes(packb(["step", np.asarray(action, np.float32)]))
        return {i: tuple(unpackb(self.connections[i].recv_bytes())) for i in actions}

    def wrong_instruction(self, index: int) -> str:
        self.connections[index].send_bytes(packb(["wrong_instruction", None]))
        return unpackb(self.connections[index].recv_bytes())

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send_bytes(packb(["close", None]))
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def make_vector_env(env_config: dict, count: int, workers: bool = False) -> InProcessEnvs:
    """`count` envs of the EVAL_ENVS section `env_config`; `workers`: one process each (slow simulators)."""
    return WorkerEnvs(env_config, count) if workers else InProcessEnvs(env_config, count)
