"""The mock layer: scripted workers with no process and no wire protocol.

A :class:`MockWorker` is a worker handle (a :class:`~poolkit._worker.Worker` subclass, so the
pool drives it exactly as it drives a real one: same state machine, same in-flight table,
same failure handling) whose "process" is a task in the pool's task group. Calls are not
framed or sent anywhere: the mock runs each one as the :class:`MockScript` says (return a
value, raise, crash, hang, delay, or run the real target in-process) and hands the reply to
the handle's ordinary reply path.

Use it to test code that *uses* a pool without running real targets::

    script = MockScript()
    script.on("mypkg.model:predict").respond(returns(0.9), raises(ValueError("bad input")))
    script.on("mypkg.model:train").respond(crashes())
    async with mock_pool(script, min_workers=2) as pool: ...
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import inspect
import itertools
import json
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .. import _protocol as proto
from .._call import Call, CallStatus, describe_target
from .._errors import FailureKind, WorkerStartupError
from .._state import WorkerEvent
from .._worker import Worker, WorkerOwner
from ..worker._runtime import handler_method
from ._context import FakeExit, freeze_hook, in_process

if TYPE_CHECKING:
    from .._config import PoolConfig
    from .._transport import Launcher

__all__ = ["MockScript", "MockWorker", "crashes", "delays", "freezes", "hangs", "raises", "returns", "runs"]

MOCK_RSS = 30 * 2**20  # what a mock worker reports as its memory until told otherwise

_mock_pids = itertools.count(800_000)


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """One scripted answer. Build with :func:`returns`, :func:`raises`, :func:`crashes`,
    :func:`hangs`, :func:`delays` or :func:`runs`."""

    action: str
    value: Any = None
    seconds: float = 0.0


def returns(value: Any) -> Behaviour:
    """Answer with ``value`` without running the target."""
    return Behaviour("return", value)


def raises(exc: BaseException) -> Behaviour:
    """Answer as if the target raised ``exc`` (the caller gets a RemoteError)."""
    return Behaviour("raise", exc)


def crashes(returncode: int = -9) -> Behaviour:
    """The worker dies while running the call (negative: killed by that signal)."""
    return Behaviour("crash", returncode)


def hangs() -> Behaviour:
    """Never answer; the call ends by its timeout or cancellation (which kills the worker)."""
    return Behaviour("hang")


def freezes() -> Behaviour:
    """The worker freezes while running the call (as under SIGSTOP): no answer, and no
    heartbeat replies either, so the pool finds it unresponsive and kills it."""
    return Behaviour("freeze")


def delays(seconds: float) -> Behaviour:
    """Wait ``seconds`` (on the event loop's clock), then run the real target."""
    return Behaviour("run", seconds=seconds)


def runs() -> Behaviour:
    """Run the real target in-process (the default for unscripted targets)."""
    return Behaviour("run")


class _Rule:
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.behaviours: collections.deque[Behaviour] = collections.deque([runs()])

    def respond(self, *behaviours: Behaviour) -> None:
        """Answer successive calls with ``behaviours`` in order; the last one repeats."""
        if not behaviours:
            raise ValueError("respond() needs at least one behaviour")
        self.behaviours = collections.deque(behaviours)

    def next(self) -> Behaviour:
        return self.behaviours.popleft() if len(self.behaviours) > 1 else self.behaviours[0]


@dataclasses.dataclass(frozen=True)
class MockCall:
    """A call as a mock worker saw it (for assertions)."""

    worker_id: str
    target: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class MockScript:
    """What mock workers do, shared by every worker of a pool.

    ``on(pattern)`` matches target names (``fnmatch`` patterns such as ``"mypkg.*"``); the
    most recently added matching rule wins; unmatched targets run for real in-process.
    ``startup_error`` makes every worker fail its startup with that message.
    ``calls`` records every call the workers ran, in order.
    """

    def __init__(self, *, startup_error: str | None = None) -> None:
        self.startup_error = startup_error
        self.rules: list[_Rule] = []
        self.calls: list[MockCall] = []

    def on(self, target: str | Callable[..., Any] = "*") -> _Rule:
        rule = _Rule(target if isinstance(target, str) else describe_target(target))
        self.rules.append(rule)
        return rule

    def behaviour_for(self, target_name: str) -> Behaviour:
        for rule in reversed(self.rules):
            if fnmatch.fnmatchcase(target_name, rule.pattern):
                return rule.next()
        return runs()

    def factory(self) -> Callable[[WorkerOwner, PoolConfig, Launcher, str], Worker]:
        """A ``worker_factory`` for :class:`~poolkit.Pool` that builds mock workers."""

        def build(owner: WorkerOwner, config: PoolConfig, launcher: Launcher, worker_id: str) -> Worker:
            return MockWorker(owner, config, launcher, worker_id, script=self)

        return build


class MockWorker(Worker):
    """A worker handle whose process is a task and whose calls are scripted (module docstring)."""

    def __init__(
        self,
        owner: WorkerOwner,
        config: PoolConfig,
        launcher: Launcher,
        worker_id: str,
        *,
        script: MockScript,
    ) -> None:
        super().__init__(owner, config, launcher, worker_id)
        self._script = script
        self._todo: collections.deque[Call] = collections.deque()
        self._skip: set[int] = set()
        self._wake = anyio.Event()
        self._exited = anyio.Event()
        self._stopping = False
        self._targets: dict[str, Any] = {}
        self._handler: Any = None
        self._session_objs: dict[Any, Any] = {}
        self.frozen = False  # set by freezes(): heartbeats go unanswered
        self.fake_rss = MOCK_RSS  # reported with each heartbeat reply; tests raise it

    # ---- the pool's requests ------------------------------------------------------------------
    def submit(self, call: Call) -> None:
        self.fsm.fire(WorkerEvent.DISPATCH)
        call_id = self._next_id()
        call.call_id = call_id
        call.worker = self
        call.status = CallStatus.SENT
        self._inflight[call_id] = call
        self._todo.append(call)
        self._wake.set()

    def cancel(self, call: Call) -> None:
        if call.worker is not self or call.call_id not in self._inflight:
            return
        if self.head() is call:
            self.kill("running call was cancelled or timed out")
        else:
            self._skip.add(call.call_id)

    def kill(self, reason: str, *, fault: Any = None, failure: FailureKind | None = None) -> None:
        if self._kill_requested or self.fsm.state.is_terminal:
            return
        super().kill(reason, fault=fault, failure=failure)
        self._exit(-15)

    def ping(self) -> None:
        """A mock process answers a heartbeat at once, unless it is frozen."""
        if self.frozen or self.fsm.state.is_terminal:
            return
        self.last_heard = self._now()
        self.rss = self.fake_rss
        self._owner.worker_pong(self)

    def _freeze(self) -> None:
        self.frozen = True

    def end_session(self, key: Any) -> None:
        super().end_session(key)
        session = self._session_objs.pop(key, None)
        if session is not None:
            session._close(lambda exc: None)

    def shutdown(self) -> None:
        super().shutdown()
        self._stopping = True
        self._wake.set()

    def _exit(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
        self._exited.set()
        self._wake.set()

    # ---- the "process" --------------------------------------------------------------------------
    async def _run(self) -> None:
        startup_error: WorkerStartupError | None = None
        try:
            self.pid = next(_mock_pids)
            self.fsm.fire(WorkerEvent.SPAWNED)
            if self._kill_requested:
                self._exit(-9)
                return
            if self._script.startup_error is not None:
                self.returncode = 3
                startup_error = WorkerStartupError(
                    self.id, pid=self.pid, reason=f"ImportError: {self._script.startup_error}", exit_code=3
                )
                return
            spec = self._config.worker
            if spec.handler is not None:  # built once per worker, as the real runtime does
                try:
                    self._handler = self._resolve(spec.handler)()
                    setup = getattr(self._handler, "setup", None)
                    if setup is not None:
                        setup()
                except Exception as exc:
                    self.returncode = 3
                    startup_error = WorkerStartupError(
                        self.id,
                        pid=self.pid,
                        reason=f"{type(exc).__qualname__}: {exc}",
                        remote_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                        remote_traceback="".join(traceback.format_exception(exc)),
                        exit_code=3,
                    )
                    return
            self.handshake = {"pid": self.pid, "protocol": proto.PROTOCOL_VERSION, "runtime": "mock"}
            if self.fsm.can(WorkerEvent.HANDSHAKE):
                self.fsm.fire(WorkerEvent.HANDSHAKE)
                self._owner.worker_ready(self)
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._serve)
                await self._exited.wait()
                tg.cancel_scope.cancel()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self._finish(startup_error)

    async def _serve(self) -> None:
        in_process.set(True)
        freeze_hook.set(self._freeze)
        try:
            while True:
                while not self._todo:
                    if self._stopping:
                        teardown = getattr(self._handler, "teardown", None)
                        if teardown is not None:
                            teardown()
                        self._exit(0)
                        return
                    self._wake = anyio.Event()
                    await self._wake.wait()
                call = self._todo.popleft()
                if call.call_id in self._skip:
                    self._skip.discard(call.call_id)
                    self._inflight.pop(call.call_id, None)
                    self._after_call()
                    continue
                await self._execute(call)
        except FakeExit as exc:
            self._exit(exc.returncode)

    async def _execute(self, call: Call) -> None:
        ext = call.ext
        if ext & proto.FLAG_TIMING:  # timings as the runtime reports them (wall, CPU)
            started, cpu = time.perf_counter_ns(), time.process_time_ns()
            try:
                await self._perform(call)
            finally:
                call.run_ns = time.perf_counter_ns() - started
                # FLAG_WALL_ONLY: the runtime skips its CPU clock, and the call has no CPU time
                call.cpu_ns = None if ext & proto.FLAG_WALL_ONLY else time.process_time_ns() - cpu
        else:
            await self._perform(call)

    async def _perform(self, call: Call) -> None:
        behaviour = self._script.behaviour_for(call.target_name)
        try:
            request = proto.decode_payload(call.payload, call.codec)
            target, args, kwargs = request[:3]
            self._script.calls.append(MockCall(self.id, call.target_name, tuple(args), dict(kwargs)))
            if len(request) > 3 and request[3] is not None:
                kwargs["session"] = self._session(request[3])
            if behaviour.action == "crash":
                raise FakeExit(int(behaviour.value))
            if behaviour.action == "freeze":
                self.frozen = True
                await anyio.sleep_forever()
            if behaviour.action == "hang":
                await anyio.sleep_forever()
            if behaviour.action == "raise":
                raise behaviour.value
            if behaviour.action == "return":
                result = behaviour.value
            else:
                if behaviour.seconds:
                    await anyio.sleep(behaviour.seconds)
                result = self._resolve(target)(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except FakeExit:
            raise
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            self._reply_error(call, exc, "running")
            return
        try:
            payload = proto.encode_payload(result, call.codec)
        except Exception as exc:  # as the other layers: a result that cannot be encoded
            self._reply_error(call, exc, "encoding")
            return
        self._on_frame(proto.Frame(proto.FrameKind.RESULT, call.call_id, call.codec, payload))

    def _session(self, key: Any) -> Any:
        from ..worker import Session  # the runtime's own type, so handlers see one Session class

        session = self._session_objs.get(key)
        if session is None:
            session = self._session_objs[key] = Session(key)
        session.calls += 1
        return session

    def _reply_error(self, call: Call, exc: BaseException, phase: str) -> None:
        info = {
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)),
            "phase": phase,
        }
        frame = proto.Frame(proto.FrameKind.ERROR, call.call_id, proto.Codec.JSON, json.dumps(info).encode())
        self._on_frame(frame)

    def _resolve(self, target: Any) -> Any:
        if not isinstance(target, str):
            return target
        if ":" not in target:  # a method of the configured handler, as in the real runtime
            return handler_method(self._handler, target)
        fn = self._targets.get(target)
        if fn is None:
            import importlib

            module_name, _, attr = target.partition(":")
            fn = importlib.import_module(module_name)
            for part in attr.split("."):
                fn = getattr(fn, part)
            self._targets[target] = fn
        return fn
