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
