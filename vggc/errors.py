"""User-facing errors.

Library code raises these with a message that fits on one line; the CLI prints the message to
stderr and exits with ``exit_code`` (2 for bad input, as Click does for usage errors).
"""


class VggcError(Exception):
    """A failure the user can act on. ``str(err)`` is a complete one-line explanation."""

    exit_code = 1


class InputError(VggcError):
    """Bad input: a file, directory or option value that cannot be used."""

    exit_code = 2


class ModelFormatError(InputError):
    """A weights file that is not a loadable state_dict of a supported architecture."""


class DataError(InputError):
    """A data directory that is missing or has no supported layout."""


class StaleCheckpointError(InputError):
    """``--resume`` found a checkpoint written by a run with other settings (or another model)."""


class UnavailableError(VggcError):
    """An optional dependency or device (TensorRT, CUDA, ...) is not present."""

    exit_code = 3


def first_line(err: BaseException | str, limit: int = 200, *, typed: bool = False) -> str:
    """Return an exception (or a message) as one line of at most ``limit`` characters: its first
    non-empty line (the type's name when it has no message). ``typed``: prefix ``Type: `` for an
    exception that is not a :class:`VggcError` (whose message is already written for the user)."""
    text = str(err).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if isinstance(err, str):
        return line[:limit]
    if typed and not isinstance(err, VggcError):
        line = f"{type(err).__name__}: {line}" if line else type(err).__name__
    return (line or type(err).__name__)[:limit]
