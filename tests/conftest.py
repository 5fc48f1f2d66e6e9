"""Shared fixtures: every test runs in its own directory, with a clean environment and builtins put back."""

from __future__ import annotations

import builtins
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import distributed as dist

from danling.runner import BaseRunner

# Environment variables set by `torchrun`; a test that inherits them would think it runs distributed.
DISTRIBUTED_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")
# The checkout under test: children import `danling` from here, not from wherever it is installed.
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    r"""
    Run each test in `tmp_path` outside any process group, then restore `print`, the process group and loggers.
    """
    monkeypatch.chdir(tmp_path)
    for name in DISTRIBUTED_ENV:
        monkeypatch.delenv(name, raising=False)
    original_print = builtins.print
    yield
    builtins.print = original_print
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("danling.runner.") and isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()


class ModelRunner(BaseRunner):
    r"""
    A tiny runner with a model and an optimizer, as a training script would define one.
    """

    def __init__(self, config: Mapping) -> None:
        super().__init__(config)
        self.model = torch.nn.Linear(2, 2)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)


@pytest.fixture
def model_runner_cls() -> type[BaseRunner]:
    r"""The [`ModelRunner`][] class (a fixture, so test modules need not import conftest)."""
    return ModelRunner


@pytest.fixture
def new_runner(tmp_path: Path) -> Callable[..., BaseRunner]:
    r"""
    Factory of fresh runners writing into their own directory under `tmp_path`, with logging off by default.
    """
    counter = itertools.count()

    def factory(config: Mapping | None = None, cls: type[BaseRunner] = BaseRunner, **kwargs: Any) -> BaseRunner:
        settings: dict[str, Any] = {"log": False, "dir": str(tmp_path / f"run{next(counter)}")}
        settings.update(config or {})
        settings.update(kwargs)
        return cls(settings)

    return factory


def train_one_step(runner: BaseRunner) -> None:
    r"""Change the weights and the optimizer state of a [`ModelRunner`][] by one SGD step."""
    loss = runner.model(torch.ones(4, 2)).pow(2).sum()
    loss.backward()
    runner.optimizer.step()
    runner.optimizer.zero_grad()


@pytest.fixture
def step() -> Callable[[BaseRunner], None]:
    r"""[`train_one_step`][] as a fixture."""
    return train_one_step


def free_port() -> int:
    r"""A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    r"""
    This process's environment for a child: without `torchrun`'s variables, one thread, this checkout first on
    `PYTHONPATH`, no GPU visible (children are CPU processes on gloo, also on a machine with GPUs), plus `extra`.
    """
    env = {key: value for key, value in os.environ.items() if key not in DISTRIBUTED_ENV}
    env["OMP_NUM_THREADS"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def descendants(pid: int) -> list[int]:
    r"""Every process below `pid` (children, grandchildren...), read from `/proc` (empty where there is none)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as fp:
                fields = fp.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        children = parents.get(queue.pop(), [])
        found += children
        queue += children
    return found


def kill_tree(pid: int) -> None:
    r"""
    SIGKILL `pid`, its process group and every descendant with its own group: `torchrun` starts each worker in a
    session of its own, which a kill of the launcher's group alone would leave running.
    """
    victims = descendants(pid)
    for target in [pid, *victims]:
        for kill in (lambda p: os.killpg(os.getpgid(p), signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
            try:
                kill(target)
            except (ProcessLookupError, PermissionError):
                pass


def run_process(
    command: list[str], cwd: Path | None = None, timeout: float = 240, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess:
    r"""
    Run `command` in its own process group and return its result (never raising on a non-zero exit).

    On timeout the whole group is killed (the launcher and every worker it started), then the test fails.
    """
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command} timed out after {timeout} s:\n{stdout[-4000:]}\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def torchrun_command(script: Path | str, *args: str, nproc: int = 2, launcher_args: tuple[str, ...] = ()) -> list[str]:
    r"""`python -m torch.distributed.run` on `nproc` local processes over 127.0.0.1, running `script args`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        *(launcher_args or ("--nnodes=1",)),
        str(script),
        *args,
    ]


def run_torchrun(
    script: Path | str,
    *args: str,
    nproc: int = 2,
    cwd: Path | None = None,
    timeout: float = 240,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess:
    r"""
    Launch `script` on `nproc` CPU processes (gloo) with `torch.distributed.run`; kill the whole process group
    on timeout, and fail with the output when `check` and the launch exits non-zero.
    """
    result = run_process(torchrun_command(script, *args, nproc=nproc), cwd=cwd, timeout=timeout, env=env)
    if check:
        assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="session")
def torchrun() -> Callable[..., subprocess.CompletedProcess]:
    r"""[`run_torchrun`][] as a fixture (test modules need not import conftest)."""
    return run_torchrun


@pytest.fixture(scope="session")
def subprocess_run() -> Callable[..., subprocess.CompletedProcess]:
    r"""[`run_process`][] as a fixture: a child in its own process group, killed whole on timeout."""
    return run_process
