"""`python -m nanogpt_lib.train` for test_distributed, with one rank made to fail on purpose.

Run by torchrun: the rank named by FAIL_RANK raises at its FAIL_STEP-th optimisation step, the way
a real fault (out of memory, a bad node) would, while the other ranks wait in a collective. With
FREEZE=1 it stops answering instead (sleeps), as a hung process would.
"""

import os
import sys
import time

from nanogpt_lib import corpus_train
from nanogpt_lib.train import main

if os.environ.get("RANK") == os.environ.get("FAIL_RANK"):
    real_step, calls = corpus_train.train_step, []

    def failing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == int(os.environ["FAIL_STEP"]):
            if os.environ.get("FREEZE") == "1":
                time.sleep(600)
            raise RuntimeError(f"injected failure on rank {os.environ['RANK']}")
        return real_step(*args, **kwargs)

    corpus_train.train_step = failing_step

main(sys.argv[1:])
