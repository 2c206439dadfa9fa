"""The local store answers the blob store's interface in place: its local paths are its own files, nothing is
copied to use them, and a tree stored from elsewhere appears whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftserve.files.storage import LocalBlobStore


def test_the_local_store_is_its_own_local_copy(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    made = store.workdir("artifacts/ftjob-a/model")
    (made / "sub").mkdir(parents=True)
    (made / "sub" / "weights.bin").write_bytes(b"w")
    store.put(made, "artifacts/ftjob-a/model")  # made in place: already stored
    assert store.local("artifacts/ftjob-a/model") == made
    assert store.key_of(made / "sub") == "artifacts/ftjob-a/model/sub"

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "x").mkdir(parents=True)
    (elsewhere / "x" / "state.pt").write_bytes(b"s")
    store.put(elsewhere, "artifacts/ftjob-a/state")
    assert store.children("artifacts/ftjob-a") == ["model", "state"]  # no half-copied neighbour left behind
    store.get("artifacts/ftjob-a/state", tmp_path / "fetched")
    assert (tmp_path / "fetched" / "x" / "state.pt").read_bytes() == b"s"

    store.delete("artifacts/ftjob-a")
    assert not store.exists("artifacts/ftjob-a/model") and store.children("artifacts/ftjob-a") == []
    with pytest.raises(FileNotFoundError):
        store.local("artifacts/ftjob-a/model")
    with pytest.raises(ValueError):
        store.local("../outside")
