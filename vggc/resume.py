"""Resume keys: the one way a resumable job (training, prune fine-tune, distillation) decides
whether a checkpoint on disk belongs to the run being asked for.

A job describes everything that shapes its result as a JSON-able ``settings`` dict. Its
:func:`run_key` is stored inside each checkpoint (``vggc.train.fit(run_key=...)``) and compared on
``--resume``; a readable copy of the settings (:func:`write_settings`) lets the refusal name what
changed. A settings file that exists but cannot be read refuses ``--resume``: it is never skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

from vggc.artifacts import read_json_object, sha256_json, write_json
from vggc.errors import ModelFormatError, StaleCheckpointError


def run_key(settings: dict) -> str:
    """Return the hex SHA-256 of ``settings`` as canonical JSON: a checkpoint's identity."""
    return sha256_json(settings)


def write_settings(path: str | Path, settings: dict) -> Path:
    """Atomically write ``settings`` (readable JSON) beside a checkpoint; return the path."""
    return write_json(path, settings)


def changed_keys(before: dict, now: dict) -> list[str]:
    """Return the sorted top-level keys whose values differ between two settings dicts."""
    same = lambda a, b: json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)  # noqa: E731
    return sorted(k for k in set(before) | set(now) if not same(before.get(k), now.get(k)))


def check_settings(path: str | Path, settings: dict, checkpoint: str | Path) -> None:
    """Raise :class:`StaleCheckpointError` unless ``path`` holds the same ``settings`` as now.

    A missing or unreadable settings file refuses the resume too (one line naming the file): a
    checkpoint whose settings cannot be checked is never resumed."""
    path, checkpoint = Path(path), Path(checkpoint)
    if not path.is_file():
        raise StaleCheckpointError(f"--resume: {path.name} (the settings of {checkpoint.name}) is missing, so the "
                                   "checkpoint cannot be checked; rerun without --resume")
    try:
        before = read_json_object(path, "settings file")
    except ModelFormatError as err:
        raise StaleCheckpointError(f"--resume: {err}; rerun without --resume") from None
    diff = changed_keys(before, settings)
    if diff:
        raise StaleCheckpointError(f"--resume: {checkpoint} was made with different settings ({', '.join(diff)}); "
                                   "rerun with the same options or without --resume")
