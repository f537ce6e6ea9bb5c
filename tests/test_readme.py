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
