"""The zygote: a template process that has imported the worker runtime and the user's modules,
and forks a worker per request. Run by the pool as ``python -m poolkit.worker._zygote CONFIG``
(``start_method="zygote"``; the parent side is ``poolkit._zygote``).

A replacement worker is then a ``fork()`` of a warm interpreter (a few milliseconds) instead
of a fresh ``python -m poolkit.worker`` (interpreter start, imports: ~60-90 ms).

Control channel: a Unix stream socket, fd 0 at startup (moved to a private fd at once, like
the runtime's protocol fds). Both directions carry one JSON object per line:

* parent -> zygote: ``{"op": "spawn", "id": N, "spec": {...}}`` with three fds attached
  (SCM_RIGHTS): the child's ends of its stdin, stdout and stderr pipes, in that order. The
  parent keeps the other ends, so the zygote never holds a parent's end of any pipe.
* zygote -> parent: ``{"op": "ready", "pid": P}`` once, after the imports;
  ``{"op": "spawned", "id": N, "pid": P}`` or ``{"op": "spawn_failed", "id": N, "error": S}``
  per request, in order; ``{"op": "exit", "pid": P, "returncode": R}`` when a child ends (the
  zygote is its parent and reaps it; R as ``Popen.returncode``: negative for a signal).

Rules this module keeps, and why:

* **No threads, ever.** ``fork()`` copies only the calling thread: a lock held by any other
  thread at that moment stays locked forever in the child. So the zygote is one thread: one
  ``select`` loop over the control socket and a SIGCHLD wake-up pipe, nothing else. Only
  the standard library plus what the user asked to preload is imported. If a preloaded module
  started a thread anyway, the zygote refuses to fork (``spawn_failed``, saying so) rather
  than hand out workers that may deadlock.
* **Dies with the pool.** The parent's end of the control socket closes when the pool
  process dies (or closes the launcher): EOF, and the zygote SIGKILLs its children and exits.
  Also PR_SET_PDEATHSIG (the pool forks the zygote from its event loop's thread, which lives
  as long as the pool) and, where that is unavailable, a ``getppid()`` check each 0.25 s of
  the same loop (not a watchdog thread: see the first rule).
* **Children die with the zygote.** The runtime in the child sets its own PR_SET_PDEATHSIG
  with the zygote as its parent (spec ``parent_pid`` is rewritten to the zygote's pid), and
  EOF on its stdin ends an idle one, exactly as for an exec'd worker.
* **Nothing a child started outlives it.** Each child leads its own process group (setsid);
  the zygote SIGKILLs that group just before reaping the child, and on the way out.
* **A child is set up exactly like an exec'd worker:** a new session (``setsid``, as the
  exec launcher's ``start_new_session``), default SIGCHLD handling, no wake-up fd, no control
  socket, its three pipes on fds 0/1/2, then the runtime's ``main``; its exit runs the normal
  interpreter shutdown (``atexit``, non-daemon threads), because ``main`` here returns its
  code to ``sys.exit`` rather than calling ``os._exit``.
* **Import failures are not the zygote's to report.** A preload or handler module that fails
  to import here is skipped; the child's runtime imports it again and reports the failure as
  a normal STARTUP_FAILED with its traceback (Python removed the failed module from
  ``sys.modules``, so the child really retries it).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
from collections import deque
from typing import Any

_CONTROL_BUF = 65536
_MAX_FDS = 48
_PARENT_POLL = 0.25  # seconds between getppid() checks when PR_SET_PDEATHSIG is not available


def _set_pdeathsig() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(1, 9, 0, 0, 0) == 0)  # PR_SET_PDEATHSIG = 1, SIGKILL = 9
    except Exception:
        return False


def _preload(config: dict[str, Any]) -> None:
    """Import the runtime and what the workers will import at startup; failures are left for
    the child to report (module docstring)."""
    import importlib

    from . import _runtime  # noqa: F401 - the point: every child starts with it imported

    path0 = config.get("sys_path0")
    if isinstance(path0, str) and path0 not in sys.path:
        sys.path.insert(0, path0)  # as the runtime does: modules beside the user's script import
    names = list(config.get("preload") or ())
    handler = config.get("handler")
    if isinstance(handler, str) and ":" in handler:
        names.append(handler.partition(":")[0])
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException:  # even SystemExit: the child reports it properly
            pass


def _threads() -> int:
    """Threads in this process now: /proc/self/task on Linux, else what ``threading`` knows."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        threading = sys.modules.get("threading")
        return threading.active_count() if threading is not None else 1


def _kill_group(pid: int) -> bool:
    """SIGKILL the process group of child ``pid`` (it called setsid(), see become_worker);
    False if there is no such group (the child has not called it yet)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        return False
    return True


def _noop(signum: int, frame: Any) -> None:
    """SIGCHLD handler: the C-level handler writes to the wake-up fd; nothing to do here."""


class _Zygote:
    def __init__(self, control: socket.socket, parent_pid: int | None, watch_parent: bool) -> None:
        self.control = control
        self.parent_pid = parent_pid
        self.watch_parent = watch_parent
        self.pid = os.getpid()
        self.children: set[int] = set()
        self.buffer = b""
        self.fds: deque[int] = deque()  # fds received and not yet claimed by a request
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def send(self, message: dict[str, Any]) -> None:
        self.control.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def serve(self) -> dict[str, Any] | None:
        """The loop. Returns None in the zygote when it is time to exit, or a worker spec in a
        freshly forked child (which then runs the runtime: see :func:`main`)."""
        signal.signal(signal.SIGCHLD, _noop)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.send({"op": "ready", "pid": os.getpid()})
        control = self.control.fileno()
        timeout = _PARENT_POLL if self.watch_parent else None
        while True:
            try:
                readable = select.select([control, self.wake_r], [], [], timeout)[0]
            except InterruptedError:  # pragma: no cover - PEP 475 retries select
                continue
            if self.watch_parent and os.getppid() != self.parent_pid:
                return None
            if self.wake_r in readable:
                try:
                    while os.read(self.wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            self.reap()  # cheap (one waitpid) and safe against a lost wake-up
            if control in readable:
                data, fds, _flags, _addr = socket.recv_fds(self.control, _CONTROL_BUF, _MAX_FDS)
                self.fds.extend(fds)
                if not data:
                    return None
                self.buffer += data
                while b"\n" in self.buffer:
                    line, self.buffer = self.buffer.split(b"\n", 1)
                    spec = self.handle(json.loads(line))
                    if spec is not None:
                        return spec

    def handle(self, request: dict[str, Any]) -> dict[str, Any] | None:
        if request.get("op") != "spawn":
            return None
        rid = request.get("id")
        nfds = int(request.get("nfds", 3))
        if len(self.fds) < nfds:  # cannot happen: fds travel with the first byte of their line
            self.send({"op": "spawn_failed", "id": rid, "error": "file descriptors missing"})
            return None
        mine = [self.fds.popleft() for _ in range(nfds)]
        threads = _threads()
        if threads > 1:  # a preloaded module started a thread: a fork could inherit a held lock
            for fd in mine:
                os.close(fd)
            error = (
                f"the zygote has {threads} threads (started by a preload or handler module at import): "
                "forking it is unsafe; import that module in setup() or use start_method='exec'"
            )
            self.send({"op": "spawn_failed", "id": rid, "error": error})
            return None
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()  # or the child would write the zygote's buffered output again
            except Exception:
                pass
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in mine:
                os.close(fd)
            self.send({"op": "spawn_failed", "id": rid, "error": f"fork failed: {exc}"})
            return None
        if pid == 0:
            return self.become_worker(mine, request["spec"])
        for fd in mine:
            os.close(fd)
        self.children.add(pid)
        self.send({"op": "spawned", "id": rid, "pid": pid})
        return None

    def become_worker(self, fds: list[int], spec: dict[str, Any]) -> dict[str, Any]:
        """In the child: look like a freshly exec'd worker (module docstring)."""
        zygote_pid = os.getppid()
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (self.wake_r, self.wake_w, *self.fds):
            os.close(fd)
        self.control.close()
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)  # dup2'd fds are inheritable, as a subprocess's 0/1/2 are
        for fd in fds:
            if fd > 2:
                os.close(fd)
        spec = dict(spec)
        spec["parent_pid"] = zygote_pid
        spec["parent_death_signal"] = True  # the zygote forked us from its only thread
        return spec

    def reap(self) -> None:
        """Reap the children that exited and report them. A worker's process group (whatever
        it started and left running) is SIGKILLed first, while the exited worker is still a
        zombie: an unreaped zombie keeps its pid, and so the group's id, from being reused,
        so only that group can be hit. Without waitid(WNOWAIT) the group goes right after the
        reap, as in the pool (``poolkit._transport`` says why that is safe too)."""
        waitid = getattr(os, "waitid", None)
        while self.children:
            try:
                if waitid is not None:
                    info = waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    if info is None:
                        return
                    if info.si_pid in self.children:
                        _kill_group(info.si_pid)
                    pid, status = os.waitpid(info.si_pid, 0)  # a zombie: does not block
                else:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                    if pid == 0:
                        return
                    if pid in self.children:
                        _kill_group(pid)
            except ChildProcessError:
                self.children.clear()
                return
            self.children.discard(pid)
            self.send({"op": "exit", "pid": pid, "returncode": os.waitstatus_to_exitcode(status)})

    def shutdown(self) -> None:
        """The pool is gone (or closed us): no child, nor anything a child started, may outlive
        it. The children are unreaped, so their pids still name their own groups."""
        for pid in self.children:
            if not _kill_group(pid):
                try:
                    os.kill(pid, signal.SIGKILL)  # forked, but not yet in a group of its own
                except OSError:
                    pass


def main(argv: list[str] | None = None) -> int:
    """Run the zygote; in each forked child, run the worker runtime and return its exit code."""
    config: dict[str, Any] = json.loads((sys.argv[1:] if argv is None else argv)[0])
    parent_pid = config.get("parent_pid")
    watch_parent = not (config.get("parent_death_signal") and _set_pdeathsig())
    if parent_pid is not None and os.getppid() != parent_pid:
        return 0  # the pool died before we could tie ourselves to it
    watch_parent = watch_parent and parent_pid is not None
    control = socket.socket(fileno=os.dup(0))  # os.dup: non-inheritable; AF_UNIX detected
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)  # output of imported modules joins the pool's stderr, never a frame stream
    _preload(config)
    zygote = _Zygote(control, parent_pid, watch_parent)
    try:
        spec = zygote.serve()
    except (BrokenPipeError, ConnectionResetError):
        spec = None  # the pool stopped listening: the same as EOF
    except BaseException:
        if os.getpid() == zygote.pid:  # a bug here: take no worker along into the unknown
            zygote.shutdown()
        raise
    if spec is None:
        zygote.shutdown()
        return 0
    # Here we are a child (a worker): the zygote's loop and objects are behind us.
    from ._runtime import main as runtime_main

    sys.argv = [sys.argv[0], json.dumps(spec)]
    return runtime_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
