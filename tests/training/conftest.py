"""A tiny random feature cache shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from random_cache import write_random_cache


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_cache(tmp_path_factory.mktemp("cache"), {"synth_train": 48, "synth_val": 16, "synth_test": 16})
