"""Transitional alias of :mod:`vggc.compress.quantize.budget` for ``vggc/pipeline/build.py``, which
another branch rewrites at the same time; remove this file once build.py imports
``TRIAL_BACKENDS``/``BudgetNotMetError`` from :mod:`vggc.compress.quantize`."""

from vggc.compress.quantize.budget import TRIAL_BACKENDS, BudgetNotMetError

__all__ = ["TRIAL_BACKENDS", "BudgetNotMetError"]
