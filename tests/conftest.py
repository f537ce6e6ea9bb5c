import os

import pytest
import torch

os.environ.setdefault("PRUNELAB_HOME", "")  # never write into a user's home from tests


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Each test gets its own cache/results folders and a fixed thread count."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path / "runs"))
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
