"""Byte streams to a worker. Knows nothing of frames or calls.

A :class:`Launcher` turns a worker description into a :class:`Connection`: a byte stream each
way, the worker's free-form stderr, and process control (pid, wait, terminate, kill). The
pool is written against these two protocols only, which is what lets the same pool code run
over real subprocesses (:class:`SubprocessLauncher`) and over an in-process fake worker
speaking the real protocol (``poolkit.testing._bridge``) in unit tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Mapping
from typing import Any, Protocol

import anyio
import anyio.abc

__all__ = ["Connection", "Launcher", "SubprocessLauncher"]


class Connection(Protocol):
    """One worker's streams and process control."""

    @property
    def pid(self) -> int | None: ...

    @property
    def returncode(self) -> int | None: ...

    async def send(self, data: bytes) -> None:
        """Write bytes to the worker. Raises anyio.BrokenResourceError if it is gone."""

    async def receive(self) -> bytes:
        """Next chunk from the worker's frame stream; b"" at end of stream."""

    async def receive_stderr(self) -> bytes:
        """Next chunk of the worker's stderr; b"" at end of stream (or if there is none)."""

    async def wait(self) -> int:
        """Wait for the worker to exit; return its returncode (negative: killed by a signal)."""

    def terminate(self) -> None:
        """Ask the worker to exit (SIGTERM). Never raises if it is already gone."""

    def kill(self) -> None:
        """Kill the worker now (SIGKILL). Never raises if it is already gone."""

    async def aclose(self) -> None:
        """Release the streams. Does not wait for the process."""


class Launcher(Protocol):
    async def launch(
        self,
        spec: Mapping[str, Any],
        *,
        command: tuple[str, ...] | None,
        python: str,
        env: Mapping[str, str],
        cwd: str | None,
        task_group: anyio.abc.TaskGroup,
    ) -> Connection:
        """Start one worker. ``spec`` is the JSON worker spec (docs/protocol.md)."""
        ...


class _ProcessConnection:
    """A :class:`Connection` over an anyio Process's stdin/stdout/stderr pipes."""

    __slots__ = ("_proc",)

    def __init__(self, proc: anyio.abc.Process) -> None:
        self._proc = proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def send(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            await self._proc.stdin.send(data)
        except (OSError, anyio.ClosedResourceError) as exc:
            raise anyio.BrokenResourceError(str(exc)) from exc

    async def receive(self) -> bytes:
        assert self._proc.stdout is not None
        try:
            return await self._proc.stdout.receive(262144)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            return b""

    async def receive_stderr(self) -> bytes:
        assert self._proc.stderr is not None
        try:
            return await self._proc.stderr.receive(65536)
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            return b""

    async def wait(self) -> int:
        return await self._proc.wait()

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc.returncode is not None:
            return
        try:
            self._proc.send_signal(sig)
        except (ProcessLookupError, OSError):
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    async def aclose(self) -> None:
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if stream is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await stream.aclose()
                    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass


class SubprocessLauncher:
    """Starts ``python -m poolkit.worker SPEC`` (or ``command SPEC``) as a real process.

    Each worker gets its own session (``start_new_session``): a Ctrl-C in the terminal reaches
    the parent only, which then closes the pool in order, and a test harness can find and
    kill exactly the workers it started. ``POOLKIT_PARENT_PID`` in the spec lets the worker
    close the parent-death race (see the worker runtime).
    """

    async def launch(
        self,
        spec: Mapping[str, Any],
        *,
        command: tuple[str, ...] | None,
        python: str,
        env: Mapping[str, str],
        cwd: str | None,
        task_group: anyio.abc.TaskGroup,
    ) -> Connection:
        argv = [*(command or (python, "-m", "poolkit.worker")), json.dumps(dict(spec))]
        full_env = {**os.environ, **env} if env else None
        proc = await anyio.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=full_env,
            start_new_session=True,
        )
        return _ProcessConnection(proc)
