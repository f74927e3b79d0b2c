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
import sys
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


# ---- process groups ---------------------------------------------------------------------------
#
# Every worker leads a process group of its own: the exec launcher starts it in a new session
# (``start_new_session``: setsid() before the exec, so the group's id is the worker's pid, and a
# session leader can never leave its group), and a zygote-forked worker calls setsid() itself.
# Whatever the worker starts (a shell wrapper's real worker, a target's subprocess) is in that
# group unless it leaves on purpose. So the pool signals the group, not the pid, and SIGKILLs
# what is left of the group once the worker has exited: no grandchild outlives its worker.
#
# Why a group id is safe to signal (pid reuse). Linux keeps a number allocated while any
# process uses it as its pid, process group id or session id. So the number ``pid`` names the
# worker's own group (or no group) as long as the worker is unreaped, and the connections
# signal the group only while they have seen no exit status; and it still names that group
# after the worker is reaped as long as any member lives, which covers every straggler the
# sweep is for. Only an EMPTY group's number is free again. A signal sent after that could
# reach a stranger only if the stranger was given that very number and made itself a group
# leader in the instant between the reap and the pool's signal (asyncio's child watcher
# reaps in its thread a moment before the loop hears; the sweep runs as the exit is heard):
# pids are allocated cyclically, so the whole pid space (32768 pids by the kernel's
# default, 4194304 as systemd sets it) would have to be used up within that instant.
# ``Popen.send_signal`` has the same window for a single pid. A group that does not exist (a
# zygote's child that has not called setsid() yet) raises ProcessLookupError, and the pid
# alone is signalled instead.


def signal_group(pid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the process group ``pid`` leads. False if there is no such group (or it
    cannot be signalled): the caller signals the pid alone. See the comment above."""
    killpg = getattr(os, "killpg", None)
    if killpg is None:  # pragma: no cover - no process groups (Windows)
        return False
    try:
        killpg(pid, sig)
    except OSError:  # ESRCH: no such group; EPERM: none of its members is ours to signal
        return False
    return True


def kill_stragglers(pid: int) -> None:
    """SIGKILL what is left of the group the exited worker ``pid`` led: the processes it
    started and did not wait for. Called once, as the pool learns of the exit (comment above:
    the group's number stays reserved while any straggler lives)."""
    signal_group(pid, signal.SIGKILL)


class _Signals:
    """``terminate``/``kill`` for a connection to a child process of ours that leads its own
    process group: the signal goes to the group (the worker and whatever it started), or to
    the pid where there is no group. A no-op once the process has been reaped (its pid may
    belong to another process by then), and a process that is already gone is not an error.
    Subclasses say how to send to the pid alone (``_send_signal``)."""

    __slots__ = ()

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    @property
    def returncode(self) -> int | None:
        raise NotImplementedError

    def _send_signal(self, sig: signal.Signals) -> None:
        raise NotImplementedError

    def _signal(self, sig: signal.Signals) -> None:
        if self.returncode is not None:
            return
        pid = self.pid
        if pid is not None and signal_group(pid, sig):
            return
        try:
            self._send_signal(sig)
        except (ProcessLookupError, OSError):
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


class _ProcessConnection(_Signals):
    """A :class:`Connection` over an anyio Process's stdin/stdout/stderr pipes (trio; asyncio
    has :class:`_AsyncioConnection`)."""

    __slots__ = ("_proc", "_swept")

    def __init__(self, proc: anyio.abc.Process) -> None:
        self._proc = proc
        self._swept = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        # trio polls (and reaps) here: this is one of the two places the exit is learnt.
        code = self._proc.returncode
        if code is not None:
            self._exited()
        return code

    def _exited(self) -> None:
        """The worker has been reaped: its stragglers go now, once (the ``kill_stragglers``
        comment says why its group id is still safe to use)."""
        if not self._swept:
            self._swept = True
            kill_stragglers(self._proc.pid)

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
        code = await self._proc.wait()
        self._exited()
        return code

    def _send_signal(self, sig: signal.Signals) -> None:
        self._proc.send_signal(sig)

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

    The session makes the worker the leader of a process group holding everything it starts
    (a shell wrapper's real worker, a target's subprocesses): the connection's terminate and
    kill signal that whole group, and once the worker has exited, whatever is left of the
    group is SIGKILLed, so no grandchild outlives its worker. A process that must outlive it
    has to leave the group (``start_new_session=True``, ``os.setsid()``).
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
        loop = _asyncio_loop()
        if loop is not None:
            transport, protocol = await loop.subprocess_exec(
                lambda: _PipeProtocol(loop),
                *argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=full_env,
                start_new_session=True,
            )
            _direct_stdout(transport, protocol)
            return _AsyncioConnection(transport, protocol)
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


def _asyncio_loop() -> Any:
    """The running asyncio loop, or None (trio, or asyncio was never imported)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_PIPE_READ = 65536


class _DirectStdout:
    """The worker's stdout pipe protocol, in place of asyncio's own: hands each chunk to
    :meth:`_PipeProtocol.pipe_data_received` from the read callback itself.

    asyncio's subprocess transport passes pipe data on with ``call_soon``, one more trip
    round the event loop per reply (~10 us on an idle loop) for no gain here. End of stream
    and connection loss still go to asyncio's protocol, which tracks the process's pipes.
    Chunks keep their order: data the old protocol received before the swap was scheduled
    earlier, and runs before the next read callback.
    """

    __slots__ = ("_inner", "_proto")

    def __init__(self, inner: Any, proto: _PipeProtocol) -> None:
        self._inner = inner
        self._proto = proto

    def connection_made(self, transport: Any) -> None:  # pragma: no cover - made before the swap
        pass

    def data_received(self, data: bytes) -> None:
        self._proto.pipe_data_received(1, data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: BaseException | None) -> None:
        self._inner.connection_lost(exc)


def _direct_stdout(transport: Any, protocol: _PipeProtocol) -> None:
    """Swap in :class:`_DirectStdout`, and read at most 64 KiB at a time (a pipe holds that
    much; asyncio's 256 KiB buffer makes glibc map and unmap fresh memory for every read
    once it is past malloc's mmap threshold, ~14 us each)."""
    pipe = transport.get_pipe_transport(1)
    if pipe is None:
        return
    pipe.set_protocol(_DirectStdout(pipe.get_protocol(), protocol))
    if isinstance(getattr(pipe, "max_size", None), int):
        pipe.max_size = _PIPE_READ


class _PipeProtocol:
    """asyncio subprocess protocol for :class:`_AsyncioConnection` (duck-typed: asyncio calls
    these methods by name). Frame-stream bytes go to ``deliver`` from the loop's own read
    callback when one is set and nothing is buffered; else they wait in ``out`` for receive()."""

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.deliver: Any = None  # (bytes) -> bool: True if it took the bytes
        self.stopped = False  # the reader is done: frame-stream bytes are dropped
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.eof = {1: False, 2: False}
        self.waiters: dict[int, Any] = {}
        self.exited = loop.create_future()
        self.paused = False
        self.drained: Any = None
        self.transport: Any = None
        self.on_exit: Any = None  # () -> None, called once when the process's exit is known

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            if self.stopped:
                return
            deliver = self.deliver
            if deliver is not None and not self.out and deliver(data):
                return
            self.out.append(data)
        elif fd == 2:
            self.err.append(data)
        else:
            return
        self.wake(fd)

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        if fd in self.eof:
            self.eof[fd] = True
            self.wake(fd)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)
            on_exit, self.on_exit = self.on_exit, None
            if on_exit is not None:
                on_exit()

    def connection_lost(self, exc: BaseException | None) -> None:
        for fd in (1, 2):
            self.eof[fd] = True
            self.wake(fd)
        self.process_exited()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def wake(self, fd: int) -> None:
        waiter = self.waiters.pop(fd, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, fd: int) -> bytes:
        chunks = self.out if fd == 1 else self.err
        while not chunks:
            if self.eof[fd]:
                return b""
            waiter = self.waiters[fd] = self.loop.create_future()
            await waiter
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return data


class _AsyncioConnection(_Signals):
    """A :class:`Connection` on asyncio's own subprocess transport (``loop.subprocess_exec``).

    Why not anyio's process here: replies arrive in the loop's read callback, and with
    :meth:`set_receiver` they are handled right there, instead of waking a reader task that
    only then looks at them: one trip round the event loop less per read. A call written to
    an idle worker goes out from the caller's step (:meth:`write_nowait`). Trio keeps anyio's
    process (:class:`_ProcessConnection`). docs/performance.md has the figures.
    """

    __slots__ = ("_proto", "_stdin", "_transport")

    def __init__(self, transport: Any, protocol: _PipeProtocol) -> None:
        self._transport = transport
        self._proto = protocol
        self._stdin = transport.get_pipe_transport(0)
        pid = transport.get_pid()
        # asyncio's child watcher reaps the worker, then the loop calls process_exited: the
        # stragglers go then, whether or not anyone waits (group ids: see kill_stragglers).
        if protocol.exited.done():  # it exited, and the protocol heard, before we got here
            kill_stragglers(pid)
        else:
            protocol.on_exit = lambda: kill_stragglers(pid)

    @property
    def pid(self) -> int | None:
        pid: int | None = self._transport.get_pid()
        return pid

    @property
    def returncode(self) -> int | None:
        code: int | None = self._transport.get_returncode()
        return code

    def set_receiver(self, deliver: Any) -> None:
        """Hand frame-stream bytes to ``deliver(data) -> bool`` in the loop's read callback
        (False: it did not take them; receive() returns them). None: receive() gets all."""
        self._proto.deliver = deliver

    def stop_receiving(self) -> None:
        """The reader is done (it found the stream corrupt, or killed the worker): no more
        deliveries, receive() returns b"" now and what is buffered is dropped."""
        proto = self._proto
        proto.deliver = None
        proto.stopped = True
        proto.out.clear()
        proto.eof[1] = True
        proto.wake(1)

    def write_nowait(self, data: bytes) -> bool:
        stdin = self._stdin
        if stdin.is_closing() or stdin.get_write_buffer_size():
            return False
        stdin.write(data)
        return True

    async def send(self, data: bytes) -> None:
        stdin = self._stdin
        if stdin.is_closing():
            raise anyio.BrokenResourceError("the worker's stdin is closed")
        try:
            stdin.write(data)
        except (OSError, RuntimeError) as exc:
            raise anyio.BrokenResourceError(str(exc)) from exc
        proto = self._proto
        while proto.paused and not stdin.is_closing():
            drained = proto.drained = proto.loop.create_future()
            await drained

    async def receive(self) -> bytes:
        return await self._proto.read(1)

    async def receive_stderr(self) -> bytes:
        return await self._proto.read(2)

    async def wait(self) -> int:
        # Shielded: cancelling a waiter must not cancel the one future every waiter shares.
        await sys.modules["asyncio"].shield(self._proto.exited)
        code = self._transport.get_returncode()
        assert code is not None
        return int(code)

    def _send_signal(self, sig: signal.Signals) -> None:
        self._transport.send_signal(sig)

    async def aclose(self) -> None:
        self._proto.deliver = None
        self._transport.close()  # kills the process if it still runs (the pool waited first)
