"""The cache folder comes from one leaf module; the C kernels' builder imports nothing else of prunelab."""

import ast
from pathlib import Path

import prunelab.native
from prunelab import cache
from prunelab.data import cache_root
from prunelab.data.locate import cache_root as located


def test_cache_base_follows_an_absolute_xdg_cache_home_only(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_base() == tmp_path / "prunelab"
    assert cache_root() == located() == tmp_path / "prunelab" / "datasets"
    assert prunelab.native.cache_dir() == tmp_path / "prunelab" / "kernels"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as XDG says
    assert cache.cache_base() == Path.home() / ".cache" / "prunelab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert prunelab.native.cache_dir() == Path.home() / ".cache" / "prunelab" / "kernels"


def prunelab_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "prunelab" or n.startswith("prunelab.")}


def test_leaf_modules_import_no_other_part_of_prunelab():
    native = Path(prunelab.native.__file__).parent
    assert {m for f in native.glob("*.py") for m in prunelab_imports(f)} <= {"prunelab.cache"}
    assert prunelab_imports(Path(cache.__file__)) == set()
