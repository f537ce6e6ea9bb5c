"""The HTML report: files beside it, self-contained page, refusal to overwrite, and a real browser."""

import base64
import csv
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import pytest
from typer.testing import CliRunner

from prunelab.analysis import write_report
from prunelab.analysis.report import OPTIONAL, SECTIONS
from prunelab.cli import app
from prunelab.errors import PrunelabError
from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec
from prunelab.training import TrainConfig

CHROMIUM = Path("/usr/bin/chromium")


def tiny(method: str) -> ExperimentSpec:
    return ExperimentSpec(
        model="lenet-300-100",
        data="synthetic",
        train=TrainConfig(iterations=4, batch_size=64),
        pruning=PruneSpec(rate=0.5, rounds=2, method=method),
        seeds=(0, 1),
        controls=("reinit",) if method == "magnitude" else (),
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory, one_thread) -> tuple[Path, list[str]]:
    """A report over two tiny experiments (the same ones test_analysis.py uses, if it ran first)."""
    root = tmp_path_factory.getbasetemp() / "analysis-runs"
    runs = [str(ExperimentRunner(tiny(m), root).run().directory) for m in ("magnitude", "l1-structured")]
    out = tmp_path_factory.mktemp("report")
    return write_report(runs, out, force=True), runs


def test_report_files_and_sections(report):
    path, _ = report
    page = path.read_text()
    for section in SECTIONS:  # no transformer here: heads are absent, PCA curves present
        assert (f'<section id="{section}">' in page) == (section not in OPTIONAL or section == "pca")
    assert "Components needed per layer" in page and "k at 95%" in page
    assert "Winning tickets" in page and "magnitude" in page and "l1-structured" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), (
        "the page must not load anything remotely"
    )
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 10
    for data in images[:3]:
        assert matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png").size
    out = path.parent
    pngs, svgs = sorted((out / "images").glob("*.png")), sorted((out / "images").glob("*.svg"))
    assert len(pngs) == len(images) and [p.stem for p in pngs] == [s.stem for s in svgs]
    for name in ("accuracy", "agreement", "weight-stability", "similarity-between"):
        assert (out / "images" / f"{name}.png").stat().st_size > 5000
    with open(out / "tables" / "table-accuracy.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ["level", "density", "magnitude", "magnitude std"] and len(rows) == 4
    linked = set(re.findall(r'href="(tables/[^"]+\.csv)"', page))
    assert linked == {f"tables/{p.name}" for p in (out / "tables").glob("*.csv")}


def test_report_refuses_a_folder_that_is_not_empty(report, tmp_path):
    _, runs = report
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(PrunelabError, match="not empty; choose another folder, or pass --force"):
        write_report(runs, out)
    with pytest.raises(PrunelabError, match="no experiment 'missing'"):
        write_report(["missing"], tmp_path / "new", root=tmp_path)
    assert not (tmp_path / "new").exists()  # nothing written before the inputs are checked
    cli = CliRunner()
    result = cli.invoke(app, ["report", runs[0], "-o", str(out)])
    assert isinstance(result.exception, PrunelabError)
    result = cli.invoke(app, ["report", runs[0], "-o", str(out), "--force"])
    assert isinstance(result.exception, PrunelabError)  # --force replaces an earlier report only
    assert "not an earlier report (keep.txt)" in str(result.exception)
    earlier = out / "earlier"
    args = ["report", runs[0], "-o", str(earlier), "--no-ensembles", "--no-svg"]
    assert cli.invoke(app, args).exit_code == 0
    result = cli.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert (earlier / "report.html").is_file() and (out / "keep.txt").read_text() == "mine"
    left_out = "Left out: ensembles and agreement: it loads the dataset, and ensembles=False"
    assert left_out in (earlier / "report.html").read_text() and not list(earlier.glob("images/*.svg"))
    assert sorted(p.name for p in out.iterdir()) == ["earlier", "keep.txt"]  # no temporary left


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="no browser: /usr/bin/chromium is absent (Debian: apt-get install chromium)",
)
def test_report_in_a_headless_browser(report, tmp_path):
    """Chromium loads the page offline with no script error, every image decodes, sections show."""
    path, _ = report
    probe = tmp_path / "probe.html"  # the report plus a check that reports back through the title
    check = (
        "<script>window.__errors = [];"
        "window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);"
        "window.addEventListener('load', () => { const imgs = [...document.images];"
        "const bad = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;"
        "document.title = `checked images=${imgs.length} broken=${bad} errors=${window.__errors.length}`; });"
        "</script>"
    )
    probe.write_text(path.read_text().replace("<head>", "<head>" + check, 1))
    shutil.copytree(path.parent / "images", tmp_path / "images")
    flags = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run(
        [*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120, env=env
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", dom.stdout)
    assert title and re.fullmatch(r"checked images=(\d+) broken=0 errors=0", title.group(1)), title
    assert int(title.group(1).split()[1].split("=")[1]) >= 10
    for section, heading in SECTIONS.items():
        if section not in OPTIONAL:
            assert f'<section id="{section}"><h2>{heading}</h2>' in dom.stdout.replace("&amp;", "&")
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr
    shot = tmp_path / "shot.png"
    run = subprocess.run(
        [*flags, "--window-size=1280,2400", f"--screenshot={shot}", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 0 and shot.stat().st_size > 20000, run.stderr[-2000:]
    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (2400, 1280) and img.std() > 0.05


def test_report_reads_summary_then_plots_then_tables_and_says_what_it_left_out(report):
    """Issue 28: the plots people look at first come before the long tables; a section that cannot
    apply (attention heads of an MLP) is not computed, and one line says why."""
    page = report[0].read_text()
    starts = [page.index(f'<section id="{s}">') for s in ("summary", "plots", "tables", "spec")]
    assert starts == sorted(starts)
    assert page.index('id="left-out"') < starts[0]
    assert (
        "Left out: attention heads: no experiment is a transformer with attention heads (lenet-300-100)"
        in page
    )
    assert '<section id="heads">' not in page and "Head importance" not in page


def test_report_logs_one_line_for_a_left_out_section(report, tmp_path):
    _, runs = report
    lines: list[str] = []
    write_report(runs[:1], tmp_path / "one", formats=("png",), log=lines.append)
    assert (
        "head importance: left out (no experiment is a transformer with attention heads (lenet-300-100))"
        in lines
    )
    assert "ensembles: left out (ensembles need at least two experiments)" in lines
    assert not any(line.startswith("head importance…") for line in lines)


def test_the_learning_curves_title_fits_inside_the_figure(report):
    from prunelab.analysis.plots import plot_learning_curves
    from prunelab.experiments import Store

    exp = Store(Path(report[1][0]).parents[1]).read(Path(report[1][0]))
    name = "demo: lenet-300-100 IMP + rewinding on fashion-mnist, with a long label"
    fig = plot_learning_curves(exp, name)
    fig.canvas.draw()
    box = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, (box, fig.bbox)
    assert name.split()[-1] in fig.axes[0].get_title()
