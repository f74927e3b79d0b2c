"""Worker targets and the code that calls them through a pool.

Everything a worker runs lives in this importable module (never in a test file): a worker
process imports ``downstream_demo.tasks`` to resolve ``"downstream_demo.tasks:word_count"`` or
to unpickle a reference to :func:`word_count`.
"""

from __future__ import annotations

import collections
import hashlib
import re
from collections.abc import Iterable
from typing import Any

from poolkit import Pool, RemoteError

__all__ = ["Indexer", "checksum", "count_corpus", "word_count"]

_WORD = re.compile(r"[a-z0-9']+")


def word_count(text: str) -> dict[str, int]:
    """How often each (lower-cased) word occurs in ``text``."""
    return dict(collections.Counter(_WORD.findall(text.lower())))


def checksum(data: bytes) -> str:
    """The SHA-256 of ``data``, in hex."""
    return hashlib.sha256(data).hexdigest()


class Indexer:
    """A worker handler: built once per worker (``WorkerSpec(handler=...)``), then its methods
    are call targets by name (``pool.call("keywords", text)``)."""

    def __init__(self) -> None:
        self.stopwords: frozenset[str] = frozenset()
        self.calls = 0

    def setup(self) -> None:
        """Runs once when the worker starts (a real project would load a model or a file)."""
        self.stopwords = frozenset({"a", "an", "and", "of", "the", "to"})

    def keywords(self, text: str) -> list[str]:
        """The words of ``text`` that are not stop words, most frequent first (ties: alphabetical)."""
        self.calls += 1
        counts = word_count(text)
        words = [w for w in counts if w not in self.stopwords]
        return sorted(words, key=lambda w: (-counts[w], w))

    def calls_served(self) -> int:
        """How many ``keywords`` calls this worker has served (state kept between calls)."""
        return self.calls

    def teardown(self) -> None:
        self.stopwords = frozenset()


async def count_corpus(pool: Pool, documents: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Word counts over all ``documents``, counted in ``pool``'s workers.

    A document whose count fails in the worker (the target raised: ``RemoteError``) is skipped
    and its error message reported; any other pool error (a crash, a timeout) propagates.
    Returns ``(totals, errors)``.
    """
    totals: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    for document in documents:
        try:
            counts: dict[str, Any] = await pool.call(word_count, document)
        except RemoteError as exc:
            errors.append(f"{exc.remote_type}: {exc.remote_message}")
            continue
        totals.update(counts)
    return dict(totals), errors
