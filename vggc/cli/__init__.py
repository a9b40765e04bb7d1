"""The ``vggc`` command line. Commands are thin: parse options, call the library, print.

Each command lives in its own module under :mod:`vggc.cli` and is listed in ``COMMANDS``.
"""

from __future__ import annotations

import importlib
import sys

import click

from vggc import __version__
from vggc.errors import VggcError

# module name -> command name; each module defines a click command called ``command``
COMMANDS = {
    "info": "info",
    "evaluate": "eval",
    "train": "train",
    "quantize": "quantize",
    "prune": "prune",
    "distill": "distill",
    "export": "export",
    "engine": "engine",
    "bench": "bench",
    "pipeline": "pipeline",
    "serve": "serve",
    "triton_add": "triton-add",
    "loadtest": "loadtest",
}


class VggcGroup(click.Group):
    """A group that turns library errors into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VggcError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was kept", err=True)
            sys.exit(130)

    def list_commands(self, ctx):
        return list(COMMANDS.values())

    def get_command(self, ctx, name):
        for mod, cmd in COMMANDS.items():
            if cmd == name:
                return importlib.import_module(f"vggc.cli.{mod}").command
        return None


@click.group(cls=VggcGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "max_content_width": 100})
@click.version_option(__version__, prog_name="vggc")
def main() -> None:
    """vggc: compress a trained VGG16 for CIFAR-10 (quantize, prune, distill), export it
    (ONNX, TensorRT) and measure every variant's accuracy and speed.

    Every command takes a plain state_dict (.pt) or a file an earlier command wrote.
    """
