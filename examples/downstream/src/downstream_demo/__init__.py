"""downstream_demo: text statistics computed in a poolkit pool of worker processes."""

from __future__ import annotations

from .tasks import Indexer, checksum, count_corpus, word_count

__all__ = ["Indexer", "checksum", "count_corpus", "word_count"]
