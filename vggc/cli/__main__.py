"""``python -m vggc.cli``: the ``vggc`` command (what ``torchrun -m vggc.cli ...`` runs)."""

from vggc.cli import main

if __name__ == "__main__":
    main(prog_name="vggc")
