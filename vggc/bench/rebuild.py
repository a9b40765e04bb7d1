"""The commands that rebuild a bench row's file, written so that they run in any checkout.

Where they come from (:func:`rebuild_commands`): the row's own ``rebuild`` list (the pipeline fills
it), else the ``command`` recorded for each file up the chain of manifests from the file to the
source (:func:`manifest_commands`; a file's command is its manifest's ``command`` field, else the
``metrics.command`` of the pipeline step marker ``<out>/.steps/<step>.json`` that wrote that very
file), else :data:`NOT_RECORDED`; never invented.

How they are written (:func:`relative_command`): every path inside the run's output directory (its
``--out``, as the user gave it) becomes ``$OUT/<relative path>``, so the commands run after
``OUT=<that directory>`` (:func:`out_line`) in any checkout; a command recorded by a newer pipeline
already says ``$OUT/...``. Paths outside it (the source state_dict, the data) stay as the user gave
them; the absolute ones among them (:func:`machine_paths`) are named, since they hold on one machine
only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

from vggc.artifacts import read_manifest, sha256_file
from vggc.bench.baseline import same_file
from vggc.bench.lineage import ancestors
from vggc.errors import VggcError, first_line

NOT_RECORDED = "rebuild commands not recorded"
# input roles that name what an artifact was made from: quantize/export/prune ("source"), a TensorRT
# engine ("onnx"), a Triton model ("model"), a distilled student ("teacher")
REBUILD_ROLES = ("source", "onnx", "model", "teacher")
MAX_REBUILD_LINKS = 8
OUT_VAR = "OUT"
STEPS_DIR = ".steps"  # where the pipeline keeps a marker per finished step (vggc.pipeline.steps)
MARKER_DEPTH = 2  # a step output lies at most this many directories below its run directory
_OUT_TOKEN = re.compile(r"^\$(?:OUT|\{OUT\})(?=/|$)")
_SHELL_SAFE = re.compile(r"^[\w@%+=:,./-]*$")


# ----------------------------------------------------------------------------- paths in commands

def _inside(path: str, out_dir: str) -> str | None:
    """Return ``path`` relative to ``out_dir`` (POSIX, ``""`` for the directory itself) when it
    names ``out_dir`` or a path inside it, spelled as given or absolute; else ``None``."""
    for p, o in ((os.path.normpath(path), os.path.normpath(out_dir)),
                 (os.path.abspath(path), os.path.abspath(out_dir))):
        if p == o:
            return ""
        if p.startswith(o.rstrip("/") + "/"):
            return Path(p[len(o.rstrip("/")) + 1:]).as_posix()
    return None


def _is_out_token(token: str) -> bool:
    return bool(_OUT_TOKEN.match(token))


def _out_token(rel: str, out_dir: str | None) -> str:
    """Return the shell word for ``$OUT/<rel>``: unquoted when ``OUT`` and ``rel`` need no quoting."""
    word = f"${OUT_VAR}" + (f"/{rel}" if rel else "")
    if _SHELL_SAFE.match(rel) and (out_dir is None or _SHELL_SAFE.match(out_dir)):
        return word
    return f'"${OUT_VAR}"' + (f"/{shlex.quote(rel)}" if rel else "")


def _split_option(token: str) -> tuple[str, str]:
    """Return ``(prefix, value)``: ``("--out=", "x")`` for ``--out=x``, ``("", token)`` otherwise."""
    if token.startswith("--") and "=" in token:
        name, value = token.split("=", 1)
        return name + "=", value
    return "", token


def relative_command(command: str, out_dir: str | None) -> str:
    """Return ``command`` with every path inside ``out_dir`` written ``$OUT/<relative path>``
    (``$OUT`` for ``out_dir`` itself; an option's ``--name=value`` too); only words with a ``/``
    (or spelled as ``out_dir``) count as paths. Unchanged (the same string) when no word changes and none is ``$OUT``; a
    command that cannot be split as shell words is returned unchanged."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    out, changed = [], False
    for word in words:
        prefix, value = _split_option(word)
        rel = None
        if _is_out_token(value):
            rel = _OUT_TOKEN.sub("", value).lstrip("/")
        elif out_dir is not None and ("/" in value or os.path.normpath(value) == os.path.normpath(out_dir)):
            rel = _inside(value, out_dir)
        if rel is None:
            out.append(shlex.quote(word))
        else:
            out.append(prefix + _out_token(rel, out_dir))
            changed = True
    return " ".join(out) if changed else command


def expand_out(command: str, out_dir: str) -> str:
    """Return ``command`` with its ``$OUT`` words replaced by ``out_dir`` (a marker's run directory),
    quoted for the shell: the inverse of :func:`relative_command`."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    out = []
    for word in words:
        prefix, value = _split_option(word)
        if _is_out_token(value):
            rel = _OUT_TOKEN.sub("", value).lstrip("/")
            value = (Path(out_dir) / rel).as_posix() if rel else out_dir
        out.append(shlex.quote(prefix + value))
    return " ".join(out)


# system directories, the same on every POSIX machine (a library's log may name /usr/local)
_SYSTEM_DIRS = ("usr", "etc", "dev", "proc", "sys", "bin", "sbin", "lib", "lib64")
_PART = r"[\w.+-]+"
MACHINE_PATH_IN_TEXT = re.compile(
    # an absolute POSIX path of two or more parts that starts a word: not inside a relative path
    # (../x/y, $OUT/x/y, <out>/x/y), a URL (https://h/x/y, host:8000/v2/x) or a fraction (min/opt/max);
    # neither a system directory nor an HTTP route's version (/v2/health/ready)
    rf"(?<![\w.~$/:@<>{{}})\]*%+\\-])/(?!(?:{'|'.join(_SYSTEM_DIRS)})/)(?!v\d+/){_PART}/{_PART}"
    rf"|file://(?:localhost)?/{_PART}/{_PART}"  # a file URL is a path of this machine
    r"|(?<![\w])[A-Za-z]:\\[\w.+ -]+\\"  # Windows: C:\Users\...
)


def machine_paths_in_text(text: str) -> list[str]:
    """Return the absolute paths of one machine that ``text`` names (:data:`MACHINE_PATH_IN_TEXT`
    matches): what a committed result or doc must not hold, since it holds on that machine only."""
    return [m.group(0) for m in MACHINE_PATH_IN_TEXT.finditer(text)]


def machine_paths(commands: list[str]) -> list[str]:
    """Return the absolute paths the commands name (words, or ``--name=value`` values, that start
    with ``/``), each once, in order: they hold on one machine only."""
    seen: list[str] = []
    for c in commands:
        try:
            words = shlex.split(c)
        except ValueError:
            continue
        for w in words:
            value = _split_option(w)[1]
            if value.startswith("/") and value not in seen:
                seen.append(value)
    return seen


def uses_out(commands: list[str]) -> bool:
    """Return whether any of ``commands`` names ``$OUT``."""
    return any(f"${OUT_VAR}" in c or f"${{{OUT_VAR}}}" in c for c in commands)


def out_line(out_dir: str) -> str:
    """Return the shell line that sets ``OUT`` to the run's output directory: ``OUT=<dir>``."""
    return f"{OUT_VAR}={shlex.quote(out_dir)}"


def infer_out_dir(row: dict) -> str | None:
    """Return the run directory behind a row's ``$OUT`` commands: its ``path`` less the
    ``$OUT/<rel>`` of the command word that names the row's file; ``None`` when no word does."""
    path = os.path.normpath(str(row.get("path") or ""))
    for c in row.get("rebuild") or []:
        try:
            words = shlex.split(c) if isinstance(c, str) else []
        except ValueError:
            continue
        for w in words:
            value = _split_option(w)[1]
            if not _is_out_token(value):
                continue
            rel = os.path.normpath(_OUT_TOKEN.sub("", value).lstrip("/") or ".")
            if rel != "." and path == rel:
                return "."
            if rel != "." and path.endswith("/" + rel):
                return path[: -len(rel) - 1] or "/"
    return None


# ----------------------------------------------------------------------------- recorded commands

def _marker_command(path: Path, meta: dict) -> str | None:
    """Return the ``metrics.command`` of the pipeline step marker that wrote ``path`` (the marker
    under ``<run>/.steps/`` listing ``path`` among its outputs with the digest of this very file:
    the manifest's ``sha256``, else the file's), ``$OUT`` expanded to that run directory."""
    digest = meta.get("sha256")
    for run in list(path.parents)[:MARKER_DEPTH]:
        steps = run / STEPS_DIR
        if not steps.is_dir():
            continue
        rel = path.relative_to(run).as_posix()
        for marker in sorted(steps.glob("*.json")):
            try:
                doc = json.loads(marker.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            outputs = doc.get("outputs") if isinstance(doc, dict) else None
            if not isinstance(outputs, dict) or rel not in outputs:
                continue
            if digest is None and path.is_file():
                digest = sha256_file(path)
            command = (doc.get("metrics") or {}).get("command")
            if outputs[rel] == digest and isinstance(command, str) and command.strip():
                return expand_out(command.strip(), run.as_posix())
    return None


def recorded_command(path: Path, meta: dict) -> str | None:
    """Return the command recorded for the file ``path`` (``meta``: its manifest): the manifest's
    ``command`` field, else its pipeline step marker's (:func:`_marker_command`); ``None`` if none."""
    command = meta.get("command")
    if isinstance(command, str) and command.strip():
        return command.strip()
    return _marker_command(path, meta)


def _made_from(meta: dict) -> str | None:
    return next((v.get("path") for k, v in (meta.get("inputs") or {}).items()
                 if k in REBUILD_ROLES and isinstance(v, dict) and v.get("path")), None)


def manifest_commands(path: Path) -> tuple[list[str], str | None]:
    """Return ``(commands, note)``: the commands recorded (:func:`recorded_command`) for ``path``
    and each file up its chain of inputs (:data:`REBUILD_ROLES`) to the source (the first file
    recorded as made from nothing, e.g. the trained state_dict), source first; ``note`` says what is
    missing (no commands at all: :data:`NOT_RECORDED`; some: the files without one, a chain that
    could not be followed)."""
    chain: list[tuple[Path, dict]] = []
    problems: list[str] = []
    try:
        chain.append((path, read_manifest(path)))
        chain += ancestors(chain[0][1], REBUILD_ROLES, MAX_REBUILD_LINKS)
    except VggcError as err:
        problems.append(first_line(err))
    last_path, last_meta = chain[-1] if chain else (path, {})
    if chain and not problems and _made_from(last_meta):
        problems.append(f"the chain stops at {last_path.name}: its input {_made_from(last_meta)} could not be followed")
    derived = [(p, recorded_command(p, m)) for p, m in chain if _made_from(m) is not None]
    commands = [c for _, c in reversed(derived) if c]
    missing = [p.name for p, c in derived if not c]
    if not commands:
        return [], NOT_RECORDED + (f" ({'; '.join(problems)})" if problems else "")
    if missing:
        problems.insert(0, f"incomplete: no command recorded for {', '.join(reversed(missing))}")
    return commands, "; ".join(problems) or None


def rebuild_commands(row: dict, base: dict | None = None) -> tuple[list[str], str | None, str | None]:
    """Return ``(commands, source, note)`` that rebuild ``row``'s file from the source state_dict:
    the row's own ``rebuild`` list (``source`` ``"row"``), else the manifest chain
    (:func:`manifest_commands`, ``"manifests"``); ``source`` ``None`` when there are none, and
    ``note`` says why (the baseline file itself, with none recorded, needs no rebuild). The
    commands are as recorded; :func:`relative_command` writes them for another checkout."""
    given = row.get("rebuild")
    if given:
        if isinstance(given, list) and all(isinstance(c, str) and c.strip() for c in given):
            return [c.strip() for c in given], "row", None
        return [], None, f"{NOT_RECORDED} (the row's rebuild is not a list of command strings)"
    if not row.get("path"):
        return [], None, NOT_RECORDED
    path = Path(row["path"])
    commands, note = manifest_commands(path)
    if not commands and base is not None and base.get("path") and same_file(path, Path(base["path"])):
        return [], None, "the baseline file itself: nothing to rebuild"
    return commands, ("manifests" if commands else None), note
