"""Repository-wide pytest hooks: how a notebook cell's stored output is compared with a fresh run.

What a notebook's stored output may contain (README, "Tests"):

- A result that is the same on every CPU (a shape, a count, a parameter total, a short run on Part 1's
  paragraph) is compared as printed, after `tests/nbval_sanitize.cfg` removes float noise below the
  second decimal.
- The outcome of a training run on a corpus is not: the same seed gives other last bits with other
  vector kernels (AVX-512, AVX2, ARM), and a hundred steps of training turn them into percent-level
  differences. A cell that prints such numbers carries the marker ``# NBVAL_TOLERANCE rel=R`` followed by
  a ``# (reason)`` line: its text must match word for word, every whole number (a count, a step, a
  parameter total) exactly, and every decimal number within ``R`` of the stored one, relative to it.
  What the prose concludes from those numbers (a ranking, a bound) is printed as words by the same or a
  nearby cell and compared exactly, so a broken claim still fails.
- `# NBVAL_IGNORE_OUTPUT` is for wall-clock timings, widgets and progress bars only.
"""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each. With torch's default of one thread per
    # core, the workers' OpenMP threads spin-wait against each other and a notebook runs ten times slower.
    # Set before anything imports torch (the notebooks' kernels inherit it).
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

# The Machado corpus is not in the repository (nanogpt_lib/corpora.py): tests and notebook runs read the
# local copy beside the project when there is one, through the variable the loader reads (.ci/run sets it).
_MACHADO = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "shared", "corpora", "machado")
if not os.environ.get("NANOGPT_MACHADO_DIR") and os.path.isdir(_MACHADO):
    os.environ["NANOGPT_MACHADO_DIR"] = os.path.normpath(_MACHADO)

from tests.nbval_tolerance import install  # noqa: E402

install()
