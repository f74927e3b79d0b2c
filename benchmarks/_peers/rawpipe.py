"""The raw-pipe reference: a minimal hand-written client for rawchild.py, the practical limit.

No library: ``subprocess.Popen`` children, pickled ``(function, args)`` in frames with a 12-byte
header (body length, call id; no checksum, unlike poolkit's 22-byte header with a CRC-32), the
result pickled back. Two shapes:

* :func:`pipelined` and :func:`one_in_flight` are the throughput references: one thread, one
  tight loop, no futures, no callbacks. ``pipelined`` keeps writing frames (round-robin, in
  batches) as long as the pipes take them, so many calls are in flight; ``one_in_flight``
  sends a child its next call only when its previous reply is in (what a pool without
  pipelining could reach at best).
* :class:`RawPool` is the same client with just enough machinery for the other workloads:
  ``submit`` with a completion callback (from any thread), a reader thread per child, and,
  when a child dies, its calls failed and a replacement started. ``depth`` bounds the calls in
  flight per child (None: no bound; calls beyond it wait in the parent). ``abandon`` gives
  up on a call: the one way to stop a child stuck in C code is to SIGKILL it.
"""

from __future__ import annotations

import collections
import os
import pickle
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks._peers.rawchild import HEADER, write_all

Done = Callable[[bool, Any], None]
_CHILD = [sys.executable, "-m", "benchmarks._peers.rawchild"]


class Child:
    __slots__ = ("buf", "in_flight", "pid", "proc", "r", "w")

    def __init__(self) -> None:
        self.proc = subprocess.Popen(_CHILD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pid = self.proc.pid
        self.w = self.proc.stdin.fileno()
        self.r = self.proc.stdout.fileno()
        self.buf = bytearray()
        self.in_flight: dict[int, Done] = {}

    def frames(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """Add ``chunk``; return the complete frames (call id, body), in order."""
        buf = self.buf
        buf += chunk
        out: list[tuple[int, bytes]] = []
        offset, end, size = 0, len(buf), HEADER.size
        while end - offset >= size:
            length, call_id = HEADER.unpack_from(buf, offset)
            stop = offset + size + length
            if stop > end:
                break
            out.append((call_id, bytes(buf[offset + size : stop])))
            offset = stop
        if offset:
            del buf[:offset]
        return out

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _decode(chunk: bytes, buf: bytearray) -> list[Any]:
    """Append ``chunk`` to ``buf``; unpickle and return every complete reply, in order."""
    buf += chunk
    out: list[Any] = []
    offset, end, size = 0, len(buf), HEADER.size
    unpack, loads = HEADER.unpack_from, pickle.loads
    while end - offset >= size:
        length, _call_id = unpack(buf, offset)
        stop = offset + size + length
        if stop > end:
            break
        out.append(loads(buf[offset + size : stop]))
        offset = stop
    if offset:
        del buf[:offset]
    return out


def _check(replies: list[Any]) -> None:
    for ok, value in replies:
        if not ok:
            raise RuntimeError(f"raw child failed a call: {value!r}")


def pipelined(
    children: Sequence[Child], fn: Callable[..., Any], items: Sequence[Any], batch: int = 128
) -> int:
    """Send every call as fast as the pipes take them (round-robin batches per child); return
    the number of replies. One thread, non-blocking pipes, one selector."""
    n = len(items)
    dumps, pack = pickle.dumps, HEADER.pack
    sel = selectors.DefaultSelector()
    out = [bytearray() for _ in children]
    bufs = [bytearray() for _ in children]
    for k, c in enumerate(children):
        os.set_blocking(c.w, False)
        os.set_blocking(c.r, False)
        sel.register(c.r, selectors.EVENT_READ, k)
    sent = received = 0
    try:
        while received < n:
            for k, c in enumerate(children):
                pending = out[k]
                if not pending and sent < n:
                    for x in items[sent : sent + batch]:
                        sent += 1
                        body = dumps((fn, (x,)), 5)
                        pending += pack(len(body), sent)
                        pending += body
                if pending:
                    try:
                        del pending[: os.write(c.w, pending)]
                    except BlockingIOError:
                        pass
            busy = any(out)
            for key, _ in sel.select(0 if busy else 5.0):
                k = key.data
                try:
                    chunk = os.read(children[k].r, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise RuntimeError("raw child exited")
                replies = _decode(chunk, bufs[k])
                _check(replies)
                received += len(replies)
    finally:
        sel.close()
        for c in children:
            os.set_blocking(c.w, True)
            os.set_blocking(c.r, True)
    return received


def one_in_flight(children: Sequence[Child], fn: Callable[..., Any], items: Sequence[Any]) -> int:
    """Each child gets its next call when its previous reply is in; return the replies."""
    n = len(items)
    dumps, pack = pickle.dumps, HEADER.pack
    sel = selectors.DefaultSelector()
    bufs = [bytearray() for _ in children]
    sent = received = 0

    def send(c: Child) -> None:
        nonlocal sent
        body = dumps((fn, (items[sent],)), 5)
        sent += 1
        write_all(c.w, pack(len(body), sent) + body)

    for k, c in enumerate(children):
        sel.register(c.r, selectors.EVENT_READ, k)
        if sent < n:
            send(c)
    try:
        while received < n:
            for key, _ in sel.select(5.0):
                k = key.data
                chunk = os.read(children[k].r, 1 << 16)
                if not chunk:
                    raise RuntimeError("raw child exited")
                replies = _decode(chunk, bufs[k])
                _check(replies)
                received += len(replies)
                for _ in replies:
                    if sent < n:
                        send(children[k])
    finally:
        sel.close()
    return received


def wait_ready(children: Sequence[Child]) -> None:
    """Read each child's READY frame (an empty frame with call id 0)."""
    for c in children:
        data = b""
        while len(data) < HEADER.size:
            chunk = os.read(c.r, HEADER.size - len(data))
            if not chunk:
                raise RuntimeError("raw child exited before READY")
            data += chunk


class RawPool:
    """The raw client with callbacks, reader threads and replacement of dead children."""

    def __init__(self, depth: int | None) -> None:
        self.depth = depth
        self.children: list[Child] = []
        self.queue: collections.deque[tuple[bytes, Done]] = collections.deque()
        self.lock = threading.Lock()
        self.ids = 0
        self.closing = False
        self.replaced = 0

    def start(self, workers: int) -> None:
        for _ in range(workers):
            self._add(Child())

    def _add(self, child: Child) -> None:
        self.children.append(child)
        threading.Thread(
            target=self._reader, args=(child,), daemon=True, name=f"raw reader {child.pid}"
        ).start()

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], done: Done) -> None:
        body = pickle.dumps((fn, args), 5)
        with self.lock:
            child = self._free_child()
            if child is None:
                self.queue.append((body, done))
            else:
                self._send(child, body, done)

    def _free_child(self) -> Child | None:
        best: Child | None = None
        for c in self.children:
            if (self.depth is None or len(c.in_flight) < self.depth) and (
                best is None or len(c.in_flight) < len(best.in_flight)
            ):
                best = c
        return best

    def _send(self, child: Child, body: bytes, done: Done) -> None:
        self.ids += 1
        child.in_flight[self.ids] = done
        try:
            write_all(child.w, HEADER.pack(len(body), self.ids) + body)
        except OSError:
            pass  # the child is gone: its reader fails the call

    def _dispatch(self) -> None:
        while self.queue:
            child = self._free_child()
            if child is None:
                return
            body, done = self.queue.popleft()
            self._send(child, body, done)

    def _reader(self, child: Child) -> None:
        while True:
            try:
                chunk = os.read(child.r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            settled: list[tuple[Done, Any]] = []
            with self.lock:
                for call_id, body in child.frames(chunk):
                    if call_id:
                        settled.append((child.in_flight.pop(call_id), body))
                if settled:
                    self._dispatch()
            for done, body in settled:
                ok, value = pickle.loads(body)
                done(ok, value)
        with self.lock:
            lost = list(child.in_flight.values())
            child.in_flight.clear()
            self.children.remove(child)
        error = EOFError(f"raw child {child.pid} exited (returncode {child.proc.wait()})")
        for done in lost:
            done(False, error)
        if not self.closing:
            replacement = Child()
            with self.lock:
                self.replaced += 1
                self._add(replacement)
                self._dispatch()

    def abandon(self, done: Done) -> None:
        """Give up on the call whose callback is ``done``: drop it if it is still queued, else
        SIGKILL the child running it (what a caller can do to a child stuck in C code). Its
        reader then fails the child's calls and starts a replacement."""
        with self.lock:
            for i, (_body, queued) in enumerate(self.queue):
                if queued is done:
                    del self.queue[i]
                    return
            for c in self.children:
                if any(d is done for d in c.in_flight.values()):
                    try:
                        os.kill(c.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    return

    def close(self) -> None:
        self.closing = True
        with self.lock:
            children = list(self.children)
        for c in children:
            c.close()
