"""vggc.artifacts: an artifact is never left without its manifest."""

from __future__ import annotations

import pytest

from vggc.artifacts import manifest_path, read_manifest, write_manifest_or_remove


def test_failed_manifest_removes_the_artifact_and_its_companions(tmp_path):
    art, companion = tmp_path / "m.xml", tmp_path / "m.bin"
    art.write_text("model")
    companion.write_bytes(b"weights")
    with pytest.raises(FileNotFoundError):  # an input that vanished: its SHA-256 cannot be taken
        write_manifest_or_remove(art, also=(companion,), kind="x", inputs={"source": tmp_path / "gone.pt"},
                                 settings={})
    assert not art.exists() and not companion.exists() and not manifest_path(art).exists()


def test_manifest_written_keeps_the_artifact(tmp_path):
    art = tmp_path / "m.onnx"
    art.write_text("model")
    path = write_manifest_or_remove(art, kind="onnx", inputs={}, settings={"a": 1})
    assert path == manifest_path(art) and art.exists() and read_manifest(art)["settings"] == {"a": 1}


def test_sha256_file_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    """An unchanged file is not read again; a file rewritten in place (same size, even with its old
    mtime put back) or replaced by a rename gets its new digest."""
    import builtins
    import hashlib
    import os
    import time

    from vggc.artifacts import sha256_file

    f = tmp_path / "m.bin"
    f.write_bytes(b"a" * 100)
    st = os.stat(f)
    first = sha256_file(f)
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    assert sha256_file(f) == first and sha256_file(str(f)) == first and opened == []
    monkeypatch.setattr(builtins, "open", real_open)
    time.sleep(0.01)  # a later write: the ctime moves even on a kernel with coarse timestamps
    f.write_bytes(b"b" * 100)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: the ctime still moves
    assert sha256_file(f) == hashlib.sha256(b"b" * 100).hexdigest() != first
    new = tmp_path / "new.bin"
    new.write_bytes(b"c" * 100)
    os.replace(new, f)
    assert sha256_file(f) == hashlib.sha256(b"c" * 100).hexdigest()
