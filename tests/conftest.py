"""Hypothesis profiles for the whole suite.

By default (``make test`` on a workstation) every property test draws new examples on each run,
so repeated runs keep exploring. ``HYPOTHESIS_PROFILE=ci`` (set by ``.ci/run``) draws the same
examples every time: a change fails or passes CI on its own merits, not on the seed of the day.
A failure prints the ``@reproduce_failure`` blob either way.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
