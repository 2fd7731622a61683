"""Suite-wide settings.

``make test`` runs two pytest-xdist workers on two cores. Each worker's torch would otherwise start one OpenMP thread
per core, four busy threads on two cores, and OpenMP's spin-waiting under that contention slows training tests by an
order of magnitude. One thread per worker (and per subprocess a test starts) keeps the cores busy without fighting.
"""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
