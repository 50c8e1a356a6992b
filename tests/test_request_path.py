"""The path of one served request, traced, against what docs/ARCHITECTURE.md says it is ("From the server to the
L1 head"): the main line (numbered, in order) and the helpers (bulleted) must be exactly the project files the
request runs, the main line at most 6 files, and the stack at the head server -> policy -> framework -> head."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_server_framework import STATS, observation

from deployment.client import msgpack_numpy
from vlablocks.core.config import load_config
from vlablocks.core.policy.policy import build_policy
from vlablocks.core.serving.policy import load_policy
from vlablocks.core.serving.server import PolicyServer

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## From the server to the L1 head"


def documented_path(text: str) -> tuple[list[str], list[str]]:
    """(main line in order, helpers) from the ARCHITECTURE section: `N. `path`` and `- `path`` items."""
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    main = re.findall(r"^\d+\. `([\w/.]+\.py)`", section, flags=re.MULTILINE)
    helpers = re.findall(r"^- `([\w/.]+\.py)`", section, flags=re.MULTILINE)
    return main, helpers


def test_the_section_reader_finds_both_lists():
    text = (
        f"{SECTION}\n\n1. `a/server.py`: x\n2. `a/head.py`: y\n\n- `a/codec.py`: z\n- not a file\n\n## Next\n- `b.py`"
    )
    assert documented_path(text) == (["a/server.py", "a/head.py"], ["a/codec.py"])


def project_file(filename: str) -> str | None:
    path = Path(filename)
    if not path.is_absolute() or not path.is_relative_to(ROOT) or ".venv" in path.parts:
        return None
    relative = path.relative_to(ROOT).as_posix()
    return relative if relative.startswith(("vlablocks/", "deployment/")) else None


class Recorder:
    """Project files of every function called, in first-call order, and the project files on the stack (outermost
    first) when a function named `head_call` of `head_file` is entered."""

    def __init__(self, head_file: str, head_call: str) -> None:
        self.files: dict[str, None] = {}
        self.head_stack: list[str] | None = None
        self.head = (head_file, head_call)

    def __call__(self, frame, event: str, arg) -> None:
        if event != "call":
            return
        name = project_file(frame.f_code.co_filename)
        if name is None:
            return
        self.files.setdefault(name)
        if (name, frame.f_code.co_name) == self.head and self.head_stack is None:
            stack, outer = [], frame
            while outer is not None:
                file = project_file(outer.f_code.co_filename)
                if file is not None and (not stack or stack[-1] != file):
                    stack.append(file)
                outer = outer.f_back
            self.head_stack = stack[::-1]


def traced_request(server: PolicyServer, message: bytes, recorder: Callable) -> bytes:
    """One request through the server's handler, profiled on the event loop's thread and the inference thread."""
    session = server.policy.session()  # per connection, not per request
    server._executor.submit(sys.setprofile, recorder).result()
    sys.setprofile(recorder)
    try:
        return asyncio.run(server._answer(message, session))
    finally:
        sys.setprofile(None)
        server._executor.submit(sys.setprofile, None).result()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> PolicyServer:
    experiment = load_config(ROOT / "configs/datasets/toy_two_views.yaml", ["framework.name=QwenOFT"])
    assert experiment.framework["action_model"]["name"] == "l1_regression"
    checkpoint = build_policy(experiment, STATS).save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")
    server = PolicyServer(load_policy(checkpoint))
    yield server
    server.close()


def test_the_served_request_runs_the_documented_files_and_the_main_line_is_at_most_6(server):
    message = msgpack_numpy.packb(observation(0))
    warm = msgpack_numpy.unpackb(asyncio.run(server._answer(message, server.policy.session())))  # lazy first calls
    assert warm["actions"].shape == (4, 2)
    recorder = Recorder("vlablocks/core/action_model/l1_regression.py", "predict")
    reply = msgpack_numpy.unpackb(traced_request(server, message, recorder))
    assert reply["actions"].shape == (4, 2)

    main, helpers = documented_path((ROOT / "docs/ARCHITECTURE.md").read_text())
    assert len(main) <= 6, f"the documented main line is {len(main)} files: {main}"
    assert not set(main) & set(helpers)
    ran = set(recorder.files)
    assert ran - set(main) - set(helpers) == set(), "files the request runs that ARCHITECTURE.md does not list"
    assert (set(main) | set(helpers)) - ran == set(), "files ARCHITECTURE.md lists that the request does not run"
    first_seen = [file for file in recorder.files if file in main]
    assert first_seen == main, "the main line's order in ARCHITECTURE.md is not the order the request reaches them"
    assert recorder.head_stack == [
        "vlablocks/core/serving/server.py",
        "vlablocks/core/policy/policy.py",
        "vlablocks/core/framework/qwen_oft.py",
        "vlablocks/core/action_model/l1_regression.py",
    ]
