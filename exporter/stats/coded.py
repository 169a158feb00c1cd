"""A column of categorical values kept as its distinct values and each row's index among them.

An Arrow text column is read this way (``pyarrow``'s dictionary encoding, in C) instead of as one Python string
per row: whatever maps each value to something (a category's slot in the bins, a prediction's class) then maps
each distinct value once and spreads the result over the rows with one numpy indexing. Everything else reads a
``Coded`` column as the list of its values, made the first time it is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Coded(Sequence):
    """``words``: the distinct values (str, or None for a missing value), each once; ``codes``: per row, its
    value's index in ``words``. Reads as the list ``[words[c] for c in codes]``."""

    __slots__ = ("words", "codes", "_values")

    def __init__(self, words: list, codes: np.ndarray):
        self.words = words
        self.codes = codes
        self._values: list | None = None

    @property
    def values(self) -> list:
        if self._values is None:
            table = np.empty(len(self.words), dtype=object)
            table[:] = self.words
            self._values = table[self.codes].tolist()
        return self._values

    def spread(self, mapped: list | np.ndarray) -> np.ndarray:
        """Per row, what its value maps to, given ``mapped``: per word, what it maps to."""
        return np.asarray(mapped)[self.codes]

    def take(self, rows: np.ndarray) -> Coded:
        """The column of the rows ``rows``."""
        return Coded(self.words, self.codes[rows])

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i):
        return self.values[i]

    def __iter__(self):
        return iter(self.values)

    def __contains__(self, value) -> bool:
        try:
            k = self.words.index(value)  # (the words are distinct: one at most is the value)
        except ValueError:
            return False
        return bool((self.codes == k).any())  # (a word no row takes any more, after take(), does not count)

    def __eq__(self, other) -> bool:
        return self.values == (other.values if isinstance(other, Coded) else other)

    __hash__ = None  # type: ignore[assignment]  (as a list's)

    def __repr__(self) -> str:
        return f"Coded({self.values!r})"
