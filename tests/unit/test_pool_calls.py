"""Pool calls over in-memory fake workers: call, map, starmap, statistics, repr and SyncPool."""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import weakref
from collections.abc import Generator
from typing import Any, Literal

import anyio
import pytest

from _util import scaled, wait_until
from poolkit import (
    Pool,
    PoolClosed,
    PoolState,
    PoolStatistics,
    RemoteError,
    SyncPool,
    WorkerInfo,
    WorkerState,
)
from poolkit.testing import pool_for
from poolkit.testing._bridge import BridgeLauncher
from unit._targets import (
    GATES,
    RUNS,
    TARGET,
    Blob,
    Counter,
    HashRaises,
    Unhashable,
    add,
    boom,
    echo,
    kwargs_echo,
    new_gate,
    record_or_fail,
    wait_for,
)

pytestmark = pytest.mark.anyio


def make_pool(**overrides: Any) -> Pool:
    """A small pool over fake workers (one worker unless told otherwise)."""
    fields: dict[str, Any] = {"min_workers": 1, **overrides}
    return Pool(launcher=BridgeLauncher(), **fields)


# ---- call ----------------------------------------------------------------------------------------
async def test_call_returns_the_value_of_a_callable_target() -> None:
    """A module-level callable is sent by reference, run in the worker, and its result returned."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            assert await pool.call(add, 2, 3) == 5
            assert await pool.call(echo, {"a": [1, 2]}) == {"a": [1, 2]}
            assert await pool.call(len, [1, 2, 3]) == 3


async def test_a_plain_call_waits_for_its_first_attempt_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call with no session waits for its first attempt in ``Pool.call`` and returns from
    there (no ``_result`` coroutine per call, docs/performance.md item 18); a failed one goes
    on to ``_result``, which counts it, reports it and raises it, as before."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            entered: list[int] = []
            result = pool._result

            async def counting(call: Any, error: Any = None) -> Any:
                entered.append(call.seq)
                return await result(call, error)

            monkeypatch.setattr(pool, "_result", counting)
            assert [await pool.call(add, i, 1) for i in range(3)] == [1, 2, 3]
            assert entered == []
            with pytest.raises(RemoteError, match="nope"):
                await pool.call(boom, "nope")
            assert len(entered) == 1
            async with pool.session("s") as session:  # session calls go through _result
                args, kwargs = await pool.call(kwargs_echo, 1, session=session)
                assert args == (1,) and "session" in kwargs
            assert len(entered) == 2
            stats = pool.statistics()
            assert (stats.completed, stats.failed) == (4, 1)


async def test_the_pool_lets_go_of_a_calls_arguments_once_they_are_encoded() -> None:
    """While a call is in hand (queued, sent, running), the pool keeps its encoded request,
    not the caller's argument objects: an argument the caller drops is freed at once, not
    when the call returns (a large argument's memory, and one GC-tracked tuple per call in
    hand less for the collector to scan)."""
    gate = new_gate("args")
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool, anyio.create_task_group() as tg:
            box = [Blob(1 << 20)]
            ref = weakref.ref(box[0])
            done = anyio.Event()

            async def caller() -> None:
                assert isinstance(await pool.call(wait_for, "args", box.pop()), Blob)  # (a copy)
                done.set()

            tg.start_soon(caller)
            await gate.entered.wait()  # running in the worker: the call is in hand
            assert not box
            gc.collect()
            assert ref() is None, gc.get_referrers(ref())
            gate.release.set()
            await done.wait()


async def test_targets_are_named_once_and_the_names_kept_are_bounded() -> None:
    """The pool remembers what it calls each target (errors and events name it), for at most
    256 targets; a callable object that cannot be a dict key is named each time instead."""
    with anyio.fail_after(scaled(30)):
        async with make_pool() as pool:
            assert await pool.call(Unhashable(), 21) == 42
            assert await pool.call(HashRaises(), 1) == 101
            for i in range(300):  # targets made on the fly
                assert await pool.call(functools.partial(add, i), 1) == i + 1
            assert 0 < len(pool._names) <= 256
            with pytest.raises(RemoteError) as info:
                await pool.call(boom, "named")
            assert info.value.target == "unit._targets:boom"


async def test_call_resolves_string_targets() -> None:
    """String targets "pkg.mod:func" are imported in the worker ("math:factorial", a test module)."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            assert await pool.call("math:factorial", 10) == math.factorial(10)
            assert await pool.call(TARGET + "add", "a", "b") == "ab"


async def test_call_passes_keyword_arguments() -> None:
    """Keyword arguments reach the target; a kwarg named timeout goes through functools.partial."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            assert await pool.call(kwargs_echo, 1, x=2, y="z") == ((1,), {"x": 2, "y": "z"})
            wrapped = functools.partial(kwargs_echo, timeout=5)
            assert await pool.call(wrapped, timeout=scaled(10)) == ((), {"timeout": 5})


async def test_call_rejects_bad_target_and_timeout_before_sending() -> None:
    """A target that is neither a string nor a callable, a timeout that is not a number > 0, or
    an idempotent flag that is not a bool, fails in the caller: nothing is sent."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            with pytest.raises(TypeError, match="target must be a string or a callable"):
                await pool.call(42)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="timeout must be > 0"):
                await pool.call(add, 1, 2, timeout=0)
            # NaN passed a "<= 0" check, was sent, then failed in the event loop and killed
            # the worker; a bool or a string is a mistake, not a duration.
            with pytest.raises(ValueError, match="timeout must be > 0, got nan"):
                await pool.call(add, 1, 2, timeout=math.nan)
            for junk in (True, "1"):
                with pytest.raises(TypeError, match="timeout must be a number of seconds or None"):
                    await pool.call(add, 1, 2, timeout=junk)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="idempotent must be True or False"):
                await pool.call(add, 1, 2, idempotent="no")  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="timeout must be > 0"):
                async for _ in pool.map(add, [1], [2], timeout=-1.0):
                    pass
            assert await pool.call(add, 1, 2, timeout=math.inf) == 3  # no deadline
            assert await pool.call(add, 1, 2, timeout=int(scaled(10))) == 3  # an int is fine
            stats = pool.statistics()
            assert stats.workers[0].calls_completed == 2
            assert stats.completed == 2


async def test_remote_exception_becomes_remote_error_and_worker_survives() -> None:
    """A target raising fails that call with RemoteError (type, message, traceback); the worker
    keeps serving (it is not restarted)."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            with pytest.raises(RemoteError) as info:
                await pool.call(boom, "bad input")
            err = info.value
            assert err.remote_type == "builtins.ValueError"
            assert err.remote_message == "bad input"
            assert "ValueError: bad input" in err.remote_traceback
            assert "Traceback in the worker" in str(err)
            assert err.phase.value == "running"
            assert not err.retry_safe
            assert await pool.call(add, 1, 1) == 2
            stats = pool.statistics()
            assert stats.worker_starts == 1
            assert stats.failed == 1
            assert stats.completed == 1


async def test_handler_methods_keep_state_and_teardown_runs_on_close() -> None:
    """A handler is set up once per worker, its methods are plain-name targets sharing its state,
    and a clean close runs its teardown."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(worker={"handler": TARGET + "Counter"}) as pool:
            assert await pool.call("incr") == 1
            assert await pool.call("incr", by=2) == 3
            assert len(Counter.instances) == 1
            assert Counter.torn_down == []
        assert Counter.torn_down == [3]


REFUSED = "is not a callable target: names starting with '_' and the setup/teardown hooks are not"


@pytest.mark.parametrize("layer", ["mock", "bridge"])
@pytest.mark.parametrize("name", ["setup", "teardown", "__class__", "_private", "incr.__self__"])
async def test_private_names_and_lifecycle_hooks_are_not_handler_targets(layer: str, name: str) -> None:
    """A handler's setup/teardown hooks and any name starting with "_" are refused (an
    AttributeError, as for an unknown method) before anything runs: "__class__" used to build
    a second handler, "teardown" to tear the live one down. The handler serves on untouched.
    Both in-process layers refuse exactly what the real runtime does."""
    with anyio.fail_after(scaled(10)):
        async with pool_for(layer, min_workers=1, worker={"handler": TARGET + "Counter"}) as pool:
            with pytest.raises(RemoteError) as info:
                await pool.call(name)
            assert info.value.remote_type == "builtins.AttributeError"
            assert info.value.remote_message == f"handler method {name!r} {REFUSED}"
            assert await pool.call("incr") == 1
            assert len(Counter.instances) == 1
            assert Counter.torn_down == []


@pytest.mark.parametrize("layer", ["mock", "bridge"])
async def test_dotted_target_hints_at_the_module_colon_function_form(layer: str) -> None:
    """A target like "math.factorial" (a dot for the colon) reads as a handler method: the error
    suggests 'math:factorial', with no handler set (LookupError) or with one that has no such
    attribute (AttributeError). A bare name with no dot gets no hint."""
    hint = "did you mean 'math:factorial'? (targets are \"module:function\")"
    with anyio.fail_after(scaled(10)):
        async with pool_for(layer, min_workers=1) as pool:
            with pytest.raises(RemoteError) as info:
                await pool.call("math.factorial", 5)
            assert info.value.remote_type == "builtins.LookupError"
            assert info.value.remote_message == (
                f"call target 'math.factorial' names a handler method, but no handler is set; {hint}"
            )
            with pytest.raises(RemoteError) as info:
                await pool.call("incr")
            assert info.value.remote_type == "builtins.LookupError"
            assert "did you mean" not in info.value.remote_message
        async with pool_for(layer, min_workers=1, worker={"handler": TARGET + "Counter"}) as pool:
            with pytest.raises(RemoteError) as info:
                await pool.call("math.factorial", 5)
            assert info.value.remote_type == "builtins.AttributeError"
            assert info.value.remote_message.endswith(hint)


# ---- map / starmap -------------------------------------------------------------------------------
async def test_map_returns_results_in_input_order() -> None:
    """map() yields results in input order, even when later inputs finish first."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(min_workers=2) as pool:
            assert [x async for x in pool.map(add, [1, 2, 3, 4], [10, 20, 30, 40])] == [11, 22, 33, 44]

            first, second = new_gate("first"), new_gate("second")
            seen: list[Any] = []

            async def consume() -> None:
                async for value in pool.map(wait_for, ["first", "second"], ["A", "B"]):
                    seen.append(value)

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await first.entered.wait()
                await second.entered.wait()  # both run at once, one per worker
                second.release.set()
                await wait_until(lambda: pool.statistics().in_flight == 1, 10, "the second call to end")
                assert seen == []  # its result waits for the first one
                first.release.set()
            assert seen == ["A", "B"]


async def test_map_bounds_the_calls_in_flight_to_its_concurrency() -> None:
    """map(concurrency=2) never has more than 2 calls admitted, although the pool has room for 4
    (2 workers x pipeline depth 2); it keeps exactly 2 going while inputs remain. (chunksize=1:
    a call per input, so that calls and inputs are the same thing here; the gated calls are
    quick enough that the default would start sending them in chunks, test_map_chunks.py.)"""
    n = 6
    keys = [f"k{i}" for i in range(n)]
    with anyio.fail_after(scaled(10)):
        async with make_pool(min_workers=2, pipeline_depth=2) as pool:
            gates = [new_gate(k) for k in keys]
            results: list[Any] = []

            async def consume() -> None:
                async for value in pool.map(wait_for, keys, range(n), concurrency=2, chunksize=1):
                    results.append(value)

            def admitted() -> int:
                s = pool.statistics()
                return s.in_flight + s.queued

            def admitted_at_least(n: int) -> bool:
                return admitted() >= n

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                for i, gate in enumerate(gates):
                    await gate.entered.wait()
                    expected = min(2, n - i)

                    await wait_until(
                        functools.partial(admitted_at_least, expected), 10, f"{expected} admitted"
                    )
                    assert admitted() <= 2, pool.statistics()
                    assert all(g.runs == 0 for g in gates[i + expected :])  # never admitted yet
                    gate.release.set()
            assert results == list(range(n))
            assert pool.statistics().in_flight == 0


async def test_map_early_break_withdraws_queued_calls() -> None:
    """Leaving ``async with pool.map(...)`` early withdraws the calls still queued (they never run);
    the one already running finishes with its result discarded, and the pool keeps serving."""
    keys = ["m0", "m1", "m2", "m3"]
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=1) as pool:
            for key in keys:
                new_gate(key)

            async def release_first() -> None:
                await GATES["m0"].entered.wait()
                stats = pool.statistics()
                assert (stats.in_flight, stats.queued) == (1, 3)
                GATES["m0"].release.set()

            got: list[Any] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(release_first)
                async with pool.map(wait_for, keys, keys, concurrency=4) as results:
                    async for value in results:
                        got.append(value)
                        break
            assert got == ["m0"]
            assert pool.statistics().queued == 0
            # m1 had been sent when m0 returned: it runs to the end, nobody waits for it.
            await GATES["m1"].entered.wait()
            GATES["m1"].release.set()
            await wait_until(lambda: pool.statistics().in_flight == 0, 10, "m1 to finish")
            assert await pool.call(add, 1, 2) == 3
            assert GATES["m2"].runs == 0
            assert GATES["m3"].runs == 0
            assert pool.statistics().completed == 2  # m0 and the add; m1's result was dropped


@pytest.mark.parametrize("how", ["break", "raise"])
async def test_plain_async_for_left_early_withdraws_queued_calls(how: str) -> None:
    """``async for v in pool.map(...): break`` with no ``async with``: the iterator is dropped
    at the break, and its queued calls are withdrawn then (they stayed queued and ran for
    nobody, and the next call waited behind all of them). An exception out of the loop's
    body does the same."""
    keys = [f"p{i}" for i in range(6)]
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=1) as pool:
            for key in keys:
                new_gate(key)

            async def release_first() -> None:
                await GATES["p0"].entered.wait()
                GATES["p0"].release.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(release_first)
                try:
                    async for value in pool.map(wait_for, keys, keys, concurrency=6, chunksize=1):
                        assert value == "p0"
                        if how == "break":
                            break
                        raise KeyError(value)
                except KeyError:
                    assert how == "raise"
            assert pool.statistics().queued == 0  # withdrawn at once, nothing to wait for
            await GATES["p1"].entered.wait()  # sent when p0 returned: runs on, unobserved
            GATES["p1"].release.set()
            assert await pool.call(add, 1, 2) == 3
            assert [GATES[k].runs for k in keys[2:]] == [0, 0, 0, 0]


async def test_map_stops_at_the_first_failure_and_withdraws_the_rest() -> None:
    """The first failing call of a map raises its error; the calls still queued are withdrawn."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(pipeline_depth=1) as pool:
            got: list[Any] = []
            with pytest.raises(RemoteError, match="fail-b"):
                async for value in pool.map(record_or_fail, ["a", "fail-b", "c", "d"], concurrency=4):
                    got.append(value)
            assert got == ["a"]
            assert pool.statistics().queued == 0
            assert await pool.call(add, 2, 2) == 4  # runs after anything already sent
            assert RUNS["d"] == 0


async def test_starmap_unpacks_argument_tuples() -> None:
    """starmap() calls target(*args) for each tuple, results in input order."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            pairs = [(1, 2), (3, 4), (5, 6)]
            assert [x async for x in pool.starmap(add, pairs)] == [3, 7, 11]
            assert [x async for x in pool.starmap(add, [])] == []


async def test_map_rejects_a_concurrency_below_one() -> None:
    """map(concurrency=0) is a ValueError, raised at once."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            with pytest.raises(ValueError, match="concurrency"):
                pool.map(add, [1], [2], concurrency=0)


# ---- statistics and repr -------------------------------------------------------------------------
async def test_statistics_is_a_frozen_snapshot() -> None:
    """statistics() returns a frozen dataclass that does not change after later calls."""
    with anyio.fail_after(scaled(10)):
        async with make_pool() as pool:
            before = pool.statistics()
            assert isinstance(before, PoolStatistics)
            assert dataclasses.is_dataclass(before)
            with pytest.raises(dataclasses.FrozenInstanceError):
                before.completed = 99  # type: ignore[misc]
            assert isinstance(before.workers[0], WorkerInfo)
            with pytest.raises(dataclasses.FrozenInstanceError):
                before.workers[0].in_flight = 5  # type: ignore[misc]

            assert await pool.call(add, 1, 2) == 3
            after = pool.statistics()
            assert before.completed == 0
            assert before.workers[0].calls_completed == 0
            assert after.completed == 1
            assert after.workers[0].calls_completed == 1
            assert after.state is PoolState.RUNNING
            assert after.workers_in(WorkerState.READY) == 1
            assert after.worker_starts == 1


async def test_repr_shows_state_and_counts() -> None:
    """repr(pool) shows its name, state, call counts and workers by state."""
    with anyio.fail_after(scaled(10)):
        async with make_pool(name="reprpool") as pool:
            await pool.call(add, 1, 2)
            with pytest.raises(RemoteError):
                await pool.call(boom)
            text = repr(pool)
            assert "'reprpool'" in text
            assert "running" in text
            assert "1 ready" in text
            assert "1 ok" in text
            assert "1 failed" in text
        assert "closed" in repr(pool)


# ---- SyncPool (not async: it runs its own loop in a thread) --------------------------------------
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_pool_call_and_map(backend: Literal["asyncio", "trio"]) -> None:
    """SyncPool runs the pool in a private loop thread: call() and map() block and return results."""
    with SyncPool(min_workers=1, backend=backend, launcher=BridgeLauncher()) as pool:
        assert pool.call(add, 20, 22) == 42
        assert pool.call("math:factorial", 5) == 120
        assert pool.call(kwargs_echo, 1, k="v") == ((1,), {"k": "v"})
        assert list(pool.map(add, [1, 2, 3], [1, 1, 1])) == [2, 3, 4]
        with pytest.raises(RemoteError):
            pool.call(boom)
        assert pool.statistics().completed == 6  # 3 calls + 3 mapped
        assert "<SyncPool" in repr(pool)
        assert pool.statistics().state is PoolState.RUNNING
    assert pool.statistics().state is PoolState.CLOSED


def test_sync_pool_outside_with_refuses_calls() -> None:
    """A SyncPool that is not entered raises RuntimeError instead of hanging."""
    pool = SyncPool(min_workers=1, launcher=BridgeLauncher())
    with pytest.raises(RuntimeError, match="not running"):
        pool.call(add, 1, 2)


def test_sync_pool_map_closed_after_the_pool_is_harmless() -> None:
    """A SyncPool.map generator left unfinished inside the ``with`` block can be closed (or garbage
    collected) after the pool has closed without raising."""
    with SyncPool(min_workers=1, launcher=BridgeLauncher()) as pool:
        results = pool.map(add, [1, 2, 3], [1, 1, 1])
        assert isinstance(results, Generator)  # typed as Iterator, which has no close()
        assert next(results) == 2
    results.close()


def test_sync_pool_starmap() -> None:
    """SyncPool.starmap mirrors Pool.starmap: each item is the argument tuple, results come in
    input order, and the keywords (concurrency, timeout, chunksize) reach the async pool."""
    with SyncPool(min_workers=1, launcher=BridgeLauncher()) as pool:
        assert list(pool.starmap(add, [(1, 2), (3, 4), (5, 6)])) == [3, 7, 11]
        pairs = ([i, 10 * i] for i in range(7))  # any iterable of iterables, consumed lazily
        chunked = pool.starmap(add, pairs, concurrency=1, timeout=scaled(10), chunksize=3)
        assert list(chunked) == [11 * i for i in range(7)]
        with pytest.raises(ValueError, match="chunksize"):
            pool.starmap(add, [(1, 2)], chunksize=0)  # checked at the call, as Pool.starmap does


def test_sync_pool_after_its_block_raises_pool_closed() -> None:
    """After the ``with`` block, a map or starmap generator continued, a new call and a new
    map raise PoolClosed (what the async pool raises after close), not anyio's "This portal is
    not running"; a SyncPool never entered still says RuntimeError."""
    with SyncPool(min_workers=1, launcher=BridgeLauncher()) as pool:
        mapped = pool.map(add, [1, 2, 3], [1, 1, 1])
        starmapped = pool.starmap(add, [(1, 1), (2, 2)])
        assert next(mapped) == 2
        assert next(starmapped) == 2
    for results in (mapped, starmapped):
        with pytest.raises(PoolClosed, match="'with SyncPool"):
            next(results)
    with pytest.raises(PoolClosed):
        pool.call(add, 1, 2)
    with pytest.raises(PoolClosed):
        pool.map(add, [1], [2])
    with pytest.raises(PoolClosed):
        pool.end_session("k")


def test_sync_pool_refuses_an_unknown_backend_at_construction() -> None:
    """An unsupported backend is a ValueError naming the supported ones when the SyncPool is
    built, not a LookupError from anyio on enter."""
    with pytest.raises(ValueError, match=r"backend must be one of asyncio, trio; got 'curio'"):
        SyncPool(min_workers=1, backend="curio", launcher=BridgeLauncher())  # type: ignore[arg-type]


def test_sync_pool_sessions_by_key() -> None:
    """A session is a key passed as ``session=``: its calls share the worker's state for it,
    and SyncPool.end_session drops that state, so the key's next call starts afresh."""
    remember = "poolkit.testing.targets:remember"
    with SyncPool(min_workers=1, launcher=BridgeLauncher()) as pool:
        assert pool.call(remember, "a", session="k") == ["a"]
        assert pool.call(remember, "b", session="k") == ["a", "b"]
        assert pool.call(remember, "x", session=7) == ["x"]
        pool.end_session("k")
        assert pool.call(remember, "c", session="k") == ["c"]
        assert pool.call(remember, "y", session=7) == ["x", "y"]


def test_sync_pool_session_handle_shares_state_and_ends_it_on_exit() -> None:
    """SyncPool.session() is the blocking Pool.session(): its calls share the worker's state for
    the key, it says where that state is, and leaving ``with`` ends the session, so the key's
    next call starts afresh and the closed handle refuses calls as the async one does."""
    remember = "poolkit.testing.targets:remember"
    with SyncPool(min_workers=2, launcher=BridgeLauncher()) as pool:
        with pool.session("k", mode="strict_queue") as chat:
            assert (chat.key, chat.mode, chat.worker_id, chat.closed) == ("k", "strict_queue", None, False)
            assert chat.call(remember, "a") == ["a"]
            assert chat.call(remember, "b", timeout=scaled(10)) == ["a", "b"]
            assert pool.call(remember, "c", session="k") == ["a", "b", "c"]  # the key, same state
            assert chat.worker_id in {w.id for w in pool.statistics().workers}
            assert (chat.rebinds, chat.lost) == (0, None)
            assert repr(chat).startswith("<SyncSession 'k' strict_queue worker=")
        assert chat.closed
        with pytest.raises(RuntimeError, match="session 'k' was closed"):
            chat.call(remember, "d")
        chat.close()  # again: nothing to do
        assert pool.call(remember, "e", session="k") == ["e"]
        with pool.session(7) as other:
            assert other.mode == "hint"  # config.sessions.mode, as for a call by key
            assert other.call(remember, "x") == ["x"]


def test_sync_pool_session_checks_its_key_and_mode_when_made() -> None:
    """A bad key or mode is refused by SyncPool.session() itself, before any call."""
    with SyncPool(min_workers=1, launcher=BridgeLauncher()) as pool:
        with pytest.raises(TypeError, match="a session key must be a str or an int, not float"):
            pool.session(1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="session mode must be one of"):
            pool.session("k", mode="sticky")  # type: ignore[arg-type]


def test_sync_session_outside_the_pools_block() -> None:
    """A handle from a SyncPool not yet entered refuses calls with RuntimeError (nothing runs
    yet); one kept past the pool's block raises PoolClosed. Closing either is harmless: there
    is no session left to end."""
    remember = "poolkit.testing.targets:remember"
    early = SyncPool(min_workers=1, launcher=BridgeLauncher())
    with early.session("k") as handle, pytest.raises(RuntimeError, match="not running"):
        handle.call(remember, "a")
    assert handle.closed
    with SyncPool(min_workers=1, launcher=BridgeLauncher()) as pool:
        kept = pool.session("k")
        assert kept.call(remember, "a") == ["a"]
    with pytest.raises(PoolClosed, match="'with SyncPool"):
        kept.call(remember, "b")
    kept.close()
    assert kept.closed
