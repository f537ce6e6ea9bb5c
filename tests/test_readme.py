"""The README's Python example, run as written (on digits, with fewer rounds, to stay fast)."""

import math
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


# The demo's figures (issue 28): the README quotes a stored run of bench/demo_spread.py; every number
# it quotes is recomputed here from that run, and each claim it draws is checked to hold in it.
DEMO = Path(__file__).resolve().parent / "data" / "demo_result.json"
SHOWN_LEVELS = (0, 4, 8, 12)


def demo_figures() -> tuple[dict, list[str], dict[str, str]]:
    """The stored run, the README table rows it gives, and the narrative's figures."""
    import json

    from prunelab.stats import mean_std

    result = json.loads(DEMO.read_text())
    runs = [result["seeds"][s] for s in sorted(result["seeds"], key=int)]

    def pm(values) -> str:
        mean, std = mean_std(values)
        return f"{mean:.2%} ± {std:.2%}"

    rows = []
    for k in SHOWN_LEVELS:
        control = pm(r["reinit_test_acc"][k] for r in runs) if k else "–"
        stops = " / ".join(f"{r['early_stop'][k]:,}" for r in runs)
        cells = [str(k), f"{runs[0]['density'][k]:.2%}", f"{runs[0]['test_acc'][k]:.2%}"]
        rows.append("| " + " | ".join([*cells, pm(r["test_acc"][k] for r in runs), control, stops]) + " |")
    n = len(runs[0]["test_acc"])
    over_dense = [r["test_acc"][k] - r["test_acc"][0] for r in runs for k in range(2, n)]
    over_control = [r["test_acc"][k] - r["reinit_test_acc"][k] for r in runs for k in range(3, n)]
    control = [abs(r["reinit_test_acc"][k] - r["test_acc"][0]) for r in runs for k in range(1, n)]
    dense_stop = sorted(r["early_stop"][0] for r in runs)
    spread = max(
        max(r["early_stop"][k] for r in runs) - min(r["early_stop"][k] for r in runs) for k in range(n)
    )
    # the claims: the ticket above its dense network from 64% density (level 2) and above the reinit
    # control from 51% (level 3), in every seed; the control within a bound of dense
    assert min(over_dense) > 0 and min(over_control) > 0
    assert abs(runs[0]["density"][2] - 0.64) < 0.005 and abs(runs[0]["density"][3] - 0.51) < 0.005
    words = {
        "MARGIN_DENSE": f"{100 * min(over_dense):.1f}–{100 * max(over_dense):.1f}",
        "MARGIN_CONTROL": f"{100 * min(over_control):.1f}–{100 * max(over_control):.1f}",
        "CONTROL_RANGE": f"{math.ceil(1000 * max(control)) / 10:.1f}",
        "DENSE_STOP": f"{dense_stop[0]:,} and {dense_stop[-1]:,}",
        "STOP_SPREAD": f"{spread:,}",
    }
    return result, rows, words


def demo_section() -> str:
    text = README.read_text()
    return text[text.index("## Quick start") : text.index("## The command line")]


def test_the_readme_demo_figures_are_a_stored_demo_run():
    result, rows, words = demo_figures()
    section = demo_section()
    quoted = [line for line in section.splitlines() if re.match(r"\| \d+ \|", line)]
    assert quoted == rows
    narrative = " ".join(section.split())
    expected = {
        "MARGIN_DENSE": "above its own dense network's (by {} points)",
        "MARGIN_CONTROL": "above the reinit control's (by {} points)",
        "CONTROL_RANGE": "the control stays within {} points of the dense network",
        "DENSE_STOP": "moves between {} with the seed",
        "STOP_SPREAD": "differ by up to {} iterations",
    }
    for key, phrase in expected.items():
        assert phrase.format(words[key]) in narrative, (key, words[key])
    machine = result["machine"]
    assert f"{machine['cores']}-core Intel Xeon" in narrative and "Xeon" in machine["cpu"]
    assert f"at {machine['threads']} thread per run" in narrative
    assert f"torch {'.'.join(machine['torch'].split('.')[:2])}" in narrative
