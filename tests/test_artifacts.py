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
