import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _threads():
    """A fixed thread count for the session (modules of tiny models may lower it, see one_thread)."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    """Each test gets its own cache and results folders, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path / "runs"))
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: with several threads, OpenMP start-up and spinning cost more than the maths."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli(capsys):
    """Run the real entry point: (exit code, stdout, stderr), with its one-line errors."""
    import prunelab.cli as main_cli

    def run(*args):
        code = main_cli.main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
