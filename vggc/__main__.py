"""``python -m vggc``: the ``vggc`` command."""

from vggc.cli import main

if __name__ == "__main__":
    main(prog_name="vggc")
