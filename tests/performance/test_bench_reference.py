"""The gate's yardsticks: the machine's own speed, no poolkit code involved.

Two fixed workloads timed like the other benchmarks: pure-Python work on the test's thread
(like the protocol and scheduler benchmarks), and 64 tasks passing 2,000 messages through anyio
memory streams in an event loop on a second thread (like the pool benchmarks, which are the
ones another program competing for the CPUs slows most). They change only when the machine
does: if they are slower than their baseline too, that gate run was (at least partly) slowed
by the machine, not by the code under test; rerun it on a quiet machine
(tests/performance/README.md).
"""

from __future__ import annotations

import contextlib

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from pytest_benchmark.fixture import BenchmarkFixture

pytestmark = pytest.mark.benchmark(group="reference")

MESSAGES = 2000
TASKS = 64


def _work(n: int = 2000) -> int:
    table: dict[int, int] = {}
    items: list[int] = []
    total = 0
    for i in range(n):
        table[i] = i * i % 97
        items.append(table[i])
        total += items[-1] ^ i
    return total


def test_reference_python_work(benchmark: BenchmarkFixture) -> None:
    """A fixed amount of pure-Python work: the machine's speed at the time of the run."""
    assert benchmark(_work) == _work()


async def _relay(messages: int, tasks: int) -> int:
    """``tasks`` tasks in a ring, each passing every value it gets to the next, plus one; values
    from ``messages`` on tell each task in turn to stop (the last one forwards nothing)."""
    streams = [anyio.create_memory_object_stream[int](1) for _ in range(tasks)]
    received = 0

    async def hop(k: int) -> None:
        nonlocal received
        send = streams[(k + 1) % tasks][0]
        async for value in streams[k][1]:
            if value >= messages + tasks - 1:
                return
            await send.send(value + 1)
            if value >= messages:
                return
            received += 1

    with contextlib.ExitStack() as stack:
        for send, receive in streams:
            stack.enter_context(send)
            stack.enter_context(receive)
        async with anyio.create_task_group() as tg:
            for k in range(tasks):
                tg.start_soon(hop, k)
            await streams[0][0].send(0)
    return received


def test_reference_event_loop(benchmark: BenchmarkFixture) -> None:
    """2,000 hops between 64 tasks on an event loop in a second thread: the machine's speed as
    the pool benchmarks see it (same portal, same kind of work: task switches and streams)."""
    with start_blocking_portal("asyncio") as portal:
        hops = benchmark.pedantic(  # type: ignore[no-untyped-call]  # pytest-benchmark leaves it unannotated
            portal.call, args=(_relay, MESSAGES, TASKS), rounds=15, warmup_rounds=1
        )
    assert hops == MESSAGES
