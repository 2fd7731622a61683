"""The YAML configs shipped with diffplan, located through this package so that an installed wheel finds them.

* ``train/``: Lightning CLI configs (``diffplan fit --config``);
* ``bench/``: the Hydra benchmark configs (``diffplan bench``);
* ``data/splits/``: one YAML file per split (a log folder relative to the data root, optional log names or scene list).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["BENCH_DIR", "CONFIG_ROOT", "SPLITS_DIR", "TRAIN_DIR"]

#: The folder that holds ``train/``, ``bench/`` and ``data/`` (in a checkout or an installed package alike).
CONFIG_ROOT = Path(str(files(__name__)))
#: The Hydra benchmark configs (``config.yaml`` and its groups).
BENCH_DIR = CONFIG_ROOT / "bench"
#: The split definitions, ``<split>.yaml``.
SPLITS_DIR = CONFIG_ROOT / "data" / "splits"
#: The Lightning CLI training configs, ``<stage>.yaml``.
TRAIN_DIR = CONFIG_ROOT / "train"
