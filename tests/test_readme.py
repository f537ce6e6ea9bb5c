"""The README's Python example, run as written (on digits, with fewer rounds, to stay fast)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path))
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    code = (
        code.replace('"fashion-mnist"', '"digits"')
        .replace("rounds=10", "rounds=2")
        .replace("level=10", "level=2")
    )
    code = code.replace("epochs=3", "epochs=1").replace("seeds=(0, 1, 2)", "seeds=(0,)")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["ticket"].level == 2
    assert 0 < namespace["ticket"].mask.density() < 1


def test_readme_quick_start_is_two_make_targets():
    text = README.read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (README.parent / "Makefile").read_text()
    assert "prunelab demo" in makefile and "pytest" in makefile


def test_readme_own_module_example_runs(tmp_path, monkeypatch):
    import numpy as np

    from prunelab.models.vision import import_torchvision

    import_torchvision()  # torchvision as prunelab imports it (see prunelab.models.vision)
    monkeypatch.chdir(tmp_path)
    g = np.random.default_rng(0)
    np.savez(
        "arrays.npz",
        x_train=g.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8),
        y_train=np.arange(40) % 10,
        x_test=g.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8),
        y_test=np.arange(10) % 10,
    )
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = next(b for b in blocks if "a module you built" in b.lower() or "torchvision.models.resnet18" in b)
    code = code.replace("TrainConfig(epochs=1)", "TrainConfig(iterations=2, batch_size=8, eval_every='2it')")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    small, net = namespace["small"], namespace["net"]
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in net.parameters())
