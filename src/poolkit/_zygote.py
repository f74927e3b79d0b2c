"""The zygote launcher (``WorkerSpec(start_method="zygote")``): workers forked from a warm
template process instead of started as fresh interpreters.

:class:`ZygoteLauncher` implements :class:`~poolkit._transport.Launcher`. Its first launch
starts ONE template process, ``python -m poolkit.worker._zygote`` (same python, environment
and working directory as an exec'd worker), which imports the worker runtime, the spec's
``preload`` modules and its handler's module, then forks a worker per request. The runtime
side, the control protocol and the rules it keeps (one thread, dies with the pool, children
set up exactly like exec'd workers) are described in :mod:`poolkit.worker._zygote`.

Here, per launch: three pipes are made in this process; the worker's ends travel to the zygote
over the control socket (SCM_RIGHTS) with the worker's JSON spec, and are closed here at once,
so the pipes behave exactly as ``subprocess`` pipes do (EOF when the worker and every process
that inherited its fds are gone). The zygote answers with the new pid; it is the worker's
parent, so it reaps it and reports its exit status, which :meth:`_ZygoteConnection.wait`
returns (negative for a signal, as ``Popen.returncode``). Signals go to the worker's process
group (it called setsid(), so the group holds whatever it started), while a pidfd on Linux says
the worker has not been reaped; to the pid alone before the child's setsid(). The zygote
SIGKILLs a worker's group just before reaping it, so no straggler outlives its worker.

No reader task: the control socket is read by whichever task needs a message (a launch
waiting for its pid, a ``wait()`` waiting for an exit), one at a time; the others wait for
the reader to dispatch what they need. A long-lived task would keep the pool's task group
open (the pool exits it only when every worker task has ended), and messages are rare.

The zygote is stopped by :meth:`ZygoteLauncher.aclose`, or by its control socket closing
(this process exiting, or the launcher being garbage collected). If it dies, the next launch
starts a new one; if that fails too, the launch raises OSError and the pool reports a startup
failure ("could not spawn: ...").
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from ._transport import _asyncio_loop, _PipeProtocol, kill_stragglers, signal_group

__all__ = ["ZygoteLauncher"]

_READ_SIZE = 65536  # what a pipe holds; 256 KiB would be a fresh mmap per read in glibc (~14 us)
_STDERR_READ = 65536
_PIPE_BUF = 4096  # POSIX: a write of at most this many bytes to a pipe is all-or-nothing


class _ZygoteGone(Exception):
    """The zygote's control channel ended (it died or was closed)."""


class _Child:
    """One worker the zygote forked: its pid, a pidfd where the system has them, its exit."""

    __slots__ = ("pid", "pidfd", "returncode")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.pidfd: int | None = None
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            with contextlib.suppress(OSError):
                self.pidfd = pidfd_open(pid)

    def signal(self, sig: signal.Signals) -> None:
        """Signal the worker's process group (it called setsid(): the group holds whatever it
        started), or the worker alone while it has none yet (just forked). Nothing once it is
        known to be reaped: the pidfd says so even before the zygote's exit message arrives,
        and the zygote SIGKILLed the group before reaping it (``poolkit.worker._zygote``)."""
        if self.returncode is not None:
            return
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, 0)  # ESRCH once reaped: do not touch its group
            if signal_group(self.pid, sig):  # safe while unreaped: see poolkit._transport
                return
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except OSError:  # gone already (ESRCH), or not ours any more
            pass

    def exited(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class _Zygote:
    """One template process and its control socket (parent side)."""

    def __init__(
        self, proc: subprocess.Popen[bytes], control: anyio.abc.UNIXSocketStream, sock: socket.socket
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.control = control
        self.sock = sock  # the socket under ``control``, for close_now()
        self.ready = False  # the zygote said "ready": its imports are done
        self.gone: str | None = None  # why the control channel ended, once it has
        self.children: dict[int, _Child] = {}
        self.spawns: dict[int, _Child | str | None] = {}  # request id -> child, error, or pending
        self.abandoned: set[int] = set()  # requests whose launch was cancelled before the answer
        self._ids = itertools.count(1)
        self._buffer = b""
        self._reading = False
        self._wake = anyio.Event()
        self._send_lock = anyio.Lock()

    @classmethod
    async def start(
        cls, config: dict[str, Any], python: str, env: Mapping[str, str], cwd: str | None
    ) -> _Zygote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Popen from the event loop's own thread, not a worker thread (anyio.open_process on
            # trio): the zygote's PR_SET_PDEATHSIG follows the thread that forked it. The fork
            # and exec take about a millisecond (vfork), once per pool.
            proc = subprocess.Popen(  # noqa: ASYNC220 - on purpose, see above
                [python, "-m", "poolkit.worker._zygote", json.dumps(config)],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                cwd=cwd,
                env={**os.environ, **env} if env else None,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            control = await anyio.abc.UNIXSocketStream.from_socket(ours)
        except BaseException:
            ours.close()
            proc.kill()
            proc.wait()
            raise
        zygote = cls(proc, control, ours)
        try:
            await zygote._until(lambda: zygote.ready)
        except _ZygoteGone:
            await zygote.aclose()
            raise OSError(f"the zygote exited during its startup (returncode {proc.returncode})") from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await zygote.aclose()
            raise
        return zygote

    # ---- requests --------------------------------------------------------------------------
    async def spawn(self, spec: Mapping[str, Any]) -> _ZygoteConnection:
        if self.gone is not None:
            raise _ZygoteGone(self.gone)
        rid = next(self._ids)
        fds: list[int] = []
        try:
            in_r, in_w = os.pipe()
            fds += (in_r, in_w)
            out_r, out_w = os.pipe()
            fds += (out_r, out_w)
            err_r, err_w = os.pipe()
            fds += (err_r, err_w)
            message = json.dumps({"op": "spawn", "id": rid, "nfds": 3, "spec": dict(spec)}).encode() + b"\n"
            self.spawns[rid] = None
            try:
                async with self._send_lock:
                    with anyio.CancelScope(shield=True):  # half a request would garble the channel
                        await self.control.send_fds(message, [in_r, out_w, err_w])
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self.spawns.pop(rid, None)
                self._lost(f"control channel broken: {exc!r}")
                raise _ZygoteGone(self.gone) from exc
            for fd in (in_r, out_w, err_w):  # the worker has them now; ours would hide its EOF
                fds.remove(fd)
                os.close(fd)
            try:
                await self._until(lambda: self.spawns.get(rid) is not None)
            except BaseException:
                answer = self.spawns.pop(rid, None)
                if answer is None:
                    self.abandoned.add(rid)  # killed when its pid arrives
                elif isinstance(answer, _Child):
                    answer.signal(signal.SIGKILL)  # forked, but nobody will own it
                raise
            answer = self.spawns.pop(rid)
            if isinstance(answer, str):
                raise OSError(f"the zygote could not fork a worker: {answer}")
            assert answer is not None
            for fd in (in_w, out_r, err_r):
                os.set_blocking(fd, False)
            conn = _ZygoteConnection(self, answer, in_w, out_r, err_r, _asyncio_loop())
            fds.clear()
            return conn
        finally:
            for fd in fds:
                os.close(fd)

    async def wait_exit(self, child: _Child) -> int:
        with contextlib.suppress(_ZygoteGone):
            await self._until(lambda: child.returncode is not None)
        assert child.returncode is not None
        return child.returncode

    # ---- the control channel ----------------------------------------------------------------
    async def _until(self, done: Any) -> None:
        """Read and dispatch control messages until ``done()``, or wait while another task
        does. Raises _ZygoteGone if the channel ends first."""
        while not done():
            if self.gone is not None:
                raise _ZygoteGone(self.gone)
            if self._reading:
                await self._wake.wait()
                continue
            self._reading = True
            try:
                while not done() and self.gone is None:
                    try:
                        data = await self.control.receive(65536)
                    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        self._lost("the zygote exited")
                        break
                    self._feed(data)
            finally:
                self._reading = False
                self._notify()

    def _notify(self) -> None:
        wake, self._wake = self._wake, anyio.Event()
        wake.set()

    def _feed(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:
                self._lost(f"unreadable control message {line[:100]!r}")
                with contextlib.suppress(OSError):
                    self.proc.kill()  # it may be alive but is of no use: EOF ends it anyway
                return
            op = msg.get("op")
            if op == "spawned":
                rid, child = msg["id"], _Child(msg["pid"])
                self.children[child.pid] = child
                if rid in self.abandoned:
                    self.abandoned.discard(rid)
                    child.signal(signal.SIGKILL)  # nobody holds its pipes; its exit reaps it
                else:
                    self.spawns[rid] = child
            elif op == "spawn_failed":
                self.spawns[msg["id"]] = str(msg.get("error") or "unknown error")
            elif op == "exit":
                exited = self.children.pop(msg["pid"], None)
                if exited is not None:
                    exited.exited(int(msg["returncode"]))
            elif op == "ready":
                self.ready = True
        self._notify()

    def _lost(self, why: str) -> None:
        """The channel ended: every child the zygote had is (or is about to be) killed by
        its parent-death signal, and nobody will report their exits any more."""
        if self.gone is not None:
            return
        self.gone = why
        for child in list(self.children.values()):
            child.signal(signal.SIGKILL)
            # A dead zygote sweeps no group: a worker its death signal killed (and init reaped,
            # so signal() above skipped it) may have left stragglers, which still hold the
            # group's id (poolkit._transport says why signalling it is safe).
            kill_stragglers(child.pid)
            child.exited(-signal.SIGKILL)
        self.children.clear()
        for rid, answer in list(self.spawns.items()):
            if answer is None:
                self.spawns[rid] = f"the zygote exited ({why})"
        self._notify()

    # ---- shutdown ------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the control channel (the zygote kills any children left and exits) and reap
        the zygote, SIGKILLing it if it takes more than a second."""
        with anyio.CancelScope(shield=True):
            self._lost("closed")
            with contextlib.suppress(Exception):
                await self.control.aclose()
            with anyio.move_on_after(1):
                await _wait_process(self.proc)
                return
            with contextlib.suppress(OSError):
                self.proc.kill()
            await _wait_process(self.proc)

    def close_now(self) -> None:
        """Synchronous last resort (garbage collection): kill and reap the zygote."""
        self._lost("closed")
        with contextlib.suppress(Exception):
            self.sock.close()
        if self.proc.returncode is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(1)


async def _wait_process(proc: subprocess.Popen[bytes]) -> int:
    """Wait for a child started with Popen without blocking the event loop (a pidfd on Linux,
    polling elsewhere)."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if proc.returncode is None and pidfd_open is not None:
        try:
            fd = pidfd_open(proc.pid)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                await anyio.wait_readable(fd)
            finally:
                os.close(fd)
    delay = 0.001
    while proc.poll() is None:
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.05)
    return proc.returncode


class _ZygoteConnection:
    """A :class:`~poolkit._transport.Connection` to a worker forked by the zygote: raw pipe
    fds (non-blocking) driven with ``anyio.wait_readable``/``wait_writable``, so it runs on any
    anyio backend.

    On asyncio the worker's stdout is read by a reader callback of the loop's own
    (``add_reader``) into the same :class:`~poolkit._transport._PipeProtocol` the exec
    connection uses: with :meth:`set_receiver`, replies are handled in that callback rather
    than by a reader task woken for each read (64 tasks of trivial calls: ~15% more calls/s,
    as with exec workers)."""

    __slots__ = (
        "_child",
        "_closed",
        "_err",
        "_in",
        "_loop",
        "_out",
        "_proto",
        "_reading",
        "_sending",
        "_waits",
        "_zygote",
    )

    def __init__(
        self, zygote: _Zygote, child: _Child, in_w: int, out_r: int, err_r: int, loop: Any = None
    ) -> None:
        self._zygote = zygote
        self._child = child
        self._in, self._out, self._err = in_w, out_r, err_r
        self._closed = False
        self._sending = False  # a send() is under way: write_nowait must not overtake it
        self._waits: dict[int, anyio.CancelScope] = {}  # fds a task is waiting on, and its wait
        self._loop = loop
        self._proto: _PipeProtocol | None = None
        self._reading = False
        if loop is not None:
            self._proto = _PipeProtocol(loop)
            loop.add_reader(out_r, self._readable)
            self._reading = True

    def _readable(self) -> None:
        """The loop's read callback for stdout (asyncio): hand the chunk on, or note EOF."""
        proto = self._proto
        assert proto is not None
        try:
            data = os.read(self._out, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            proto.pipe_data_received(1, data)
        else:
            self._stop_reading()
            proto.pipe_connection_lost(1, None)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._out)

    def set_receiver(self, deliver: Any) -> None:
        """As :meth:`poolkit._transport._AsyncioConnection.set_receiver` (asyncio; elsewhere
        every chunk goes to receive())."""
        if self._proto is not None:
            self._proto.deliver = deliver

    def stop_receiving(self) -> None:
        """As :meth:`poolkit._transport._AsyncioConnection.stop_receiving`."""
        proto = self._proto
        if proto is None:
            return
        self._stop_reading()
        proto.deliver = None
        proto.stopped = True
        proto.out.clear()
        proto.pipe_connection_lost(1, None)

    @property
    def pid(self) -> int | None:
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        return self._child.returncode

    def write_nowait(self, data: bytes) -> bool:
        """Write ``data`` now if a pipe write can take it whole (at most PIPE_BUF bytes, which a
        pipe writes all or nothing); False: nothing written, send() it instead."""
        if self._closed or self._sending or len(data) > _PIPE_BUF:
            return False
        try:
            return os.write(self._in, data) == len(data)
        except OSError:
            return False  # full (EAGAIN) or broken: send() reports it properly

    async def send(self, data: bytes) -> None:
        self._sending = True
        try:
            await anyio.lowlevel.checkpoint()
            view = memoryview(data)
            while view:
                if self._closed:
                    raise anyio.BrokenResourceError("the connection is closed")
                try:
                    view = view[os.write(self._in, view) :]
                except BlockingIOError:
                    if not await self._wait(self._in, anyio.wait_writable):
                        raise anyio.BrokenResourceError("the connection is closed") from None
                except OSError as exc:
                    raise anyio.BrokenResourceError(str(exc)) from exc
        finally:
            self._sending = False

    async def _read(self, fd: int, size: int) -> bytes:
        """Read what is there, or wait for it. Cancellation never loses data: it is honoured
        before the read or during the wait, and the yield after an immediate read is shielded
        (trio's pattern). A reader that mostly waits thus pays no extra trip round the loop."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        while not self._closed:
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                if not await self._wait(fd, anyio.wait_readable):
                    return b""
                continue
            except OSError:
                data = b""
            await anyio.lowlevel.cancel_shielded_checkpoint()
            return data
        return b""

    async def _wait(self, fd: int, wait: Any) -> bool:
        """``wait(fd)``; False if :meth:`aclose` ended it. An fd being waited on is closed here,
        after the wait has unregistered it from the event loop: closed under a registered wait,
        its number could be reused by a new fd that the loop would then confuse with it."""
        scope = self._waits[fd] = anyio.CancelScope()
        try:
            with scope:
                await wait(fd)
        finally:
            del self._waits[fd]
            if self._closed:
                os.close(fd)
        return not scope.cancel_called

    async def receive(self) -> bytes:
        if self._proto is not None:
            return await self._proto.read(1)
        return await self._read(self._out, _READ_SIZE)

    async def receive_stderr(self) -> bytes:
        return await self._read(self._err, _STDERR_READ)

    async def wait(self) -> int:
        return await self._zygote.wait_exit(self._child)

    def terminate(self) -> None:
        self._child.signal(signal.SIGTERM)

    def kill(self) -> None:
        self._child.signal(signal.SIGKILL)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._proto is not None:  # stdout has no task waiting on it: a reader callback
            self._stop_reading()
            self._proto.pipe_connection_lost(1, None)
        for fd in (self._in, self._out, self._err):
            wait = self._waits.get(fd)
            if wait is None:
                os.close(fd)
            else:  # the waiting task closes it once the event loop has let go of it (_wait)
                wait.cancel()
        with anyio.CancelScope(shield=True):
            await anyio.lowlevel.checkpoint()


class ZygoteLauncher:
    """Starts workers as forks of a template process (module docstring). One zygote per
    launcher, started on the first launch and replaced if it dies."""

    def __init__(self) -> None:
        self._zygote: _Zygote | None = None
        self._key: tuple[Any, ...] | None = None
        self._starting: anyio.Event | None = None
        self._closed = False

    async def launch(
        self,
        spec: Mapping[str, Any],
        *,
        command: tuple[str, ...] | None,
        python: str,
        env: Mapping[str, str],
        cwd: str | None,
        task_group: anyio.abc.TaskGroup,
    ) -> _ZygoteConnection:
        if command is not None:
            raise OSError("start_method='zygote' runs the Python worker runtime: it cannot run command=")
        if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
            raise OSError(f"start_method='zygote' needs fork() and SCM_RIGHTS, which {sys.platform} lacks")
        if self._closed:
            raise OSError("the zygote launcher is closed")
        key = (python, tuple(sorted(env.items())), cwd, spec.get("handler"), tuple(spec.get("preload") or ()))
        for attempt in (1, 2):
            zygote = await self._get(key, spec, python, env, cwd)
            try:
                return await zygote.spawn(spec)
            except _ZygoteGone as exc:
                if self._zygote is zygote:
                    self._zygote = None
                with anyio.CancelScope(shield=True):
                    await zygote.aclose()
                if attempt == 2:
                    raise OSError(f"the zygote exited: {exc}") from None
        raise AssertionError("unreachable")

    async def _get(
        self,
        key: tuple[Any, ...],
        spec: Mapping[str, Any],
        python: str,
        env: Mapping[str, str],
        cwd: str | None,
    ) -> _Zygote:
        while True:
            zygote = self._zygote
            if zygote is not None and zygote.gone is None and key == self._key:
                return zygote
            if self._starting is not None:  # another launch is starting one: use it
                await self._starting.wait()
                continue
            self._starting = starting = anyio.Event()
            try:
                if zygote is not None:
                    self._zygote = None
                    await zygote.aclose()
                config = {
                    "preload": list(spec.get("preload") or ()),
                    "handler": spec.get("handler"),
                    "sys_path0": spec.get("sys_path0"),  # the user's script's directory
                    "parent_pid": os.getpid(),
                    "parent_death_signal": True,  # Popen runs on this (the loop's) thread
                }
                self._zygote = await _Zygote.start(config, python, env, cwd)
                self._key = key
                if self._closed:  # closed while it started
                    zygote, self._zygote = self._zygote, None
                    await zygote.aclose()
                    raise OSError("the zygote launcher is closed")
            finally:
                self._starting = None
                starting.set()

    @property
    def zygote_pid(self) -> int | None:
        """The running zygote's pid (tests, diagnostics)."""
        zygote = self._zygote
        return zygote.pid if zygote is not None and zygote.gone is None else None

    async def aclose(self) -> None:
        """Stop the zygote (workers still running are SIGKILLed by it). Idempotent."""
        self._closed = True
        zygote, self._zygote = self._zygote, None
        if zygote is not None:
            await zygote.aclose()

    def __del__(self) -> None:
        zygote = self._zygote
        if zygote is not None:
            self._zygote = None
            zygote.close_now()
