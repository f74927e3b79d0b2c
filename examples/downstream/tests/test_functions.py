"""The targets as plain functions: no pool, no layers, no event loop."""

from __future__ import annotations

from downstream_demo import Indexer, checksum, word_count


def test_word_count_ignores_case_and_punctuation() -> None:
    """Words are lower-cased; punctuation separates words."""
    assert word_count("The cat, the HAT.") == {"the": 2, "cat": 1, "hat": 1}


def test_checksum_is_sha256_hex() -> None:
    """checksum is the hex SHA-256 digest."""
    assert checksum(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_indexer_drops_stop_words_after_setup() -> None:
    """After setup(), keywords() leaves out stop words, most frequent first."""
    indexer = Indexer()
    indexer.setup()
    assert indexer.keywords("the b of a b c") == ["b", "c"]
