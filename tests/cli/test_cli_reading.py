"""The command line as people read it (issue 28, class 2): listings whose flags never break inside a
name, help without torch, one set of shared options on every command that can use them."""

import re
import subprocess
import sys

import pytest
import typer

import prunelab.ui as ui
from prunelab.cli import COMMANDS, app, build_command, main
from prunelab.cli.experiments import run_flags
from prunelab.cli.options import DataDir, Root, Threads
from prunelab.pruning import METHODS
from prunelab.table import Table

FLAG = re.compile(r"--[a-z0-9][a-z0-9-]*")


def method_flags() -> set[str]:
    """The flags of every method's settings: what `methods` lists."""
    from prunelab.cli.options import spec_flags

    return {f.name for _, m in METHODS.items() if m.Settings for f in spec_flags(m.Settings)}


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("listing", [["methods"], ["treatments"], ["controls"], ["data", "list"]])
def test_listings_never_break_a_name(capsys, monkeypatch, width, listing):
    monkeypatch.setattr(ui.console, "_width", width)
    assert main(listing) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= width
    words = {w for line in out.splitlines() for w in line.replace("│", " ").split()}
    shown = {m.group() for w in words for m in [FLAG.match(w.strip(",()"))] if m}
    if listing == ["methods"]:
        assert method_flags() and method_flags() <= shown, method_flags() - shown  # each whole on a line
    known = {n for f in run_flags() for d in f.decls for n in d.split("/")} | {"--data-dir"}
    assert shown <= known, shown - known  # no piece of a flag cut at the end of a line


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("command", ["run", "train", "sweep", "bench", "export", "report"])
def test_help_shows_every_flag_whole(width, command):
    """Typer's panels cut a flag too long for their column (``--slimming-min-chann…``); where a
    panel cannot hold every flag whole, the help takes click's plain layout instead."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    group = typer.main.get_command(app)
    params = group.get_command(typer.Context(group), command).params
    flags = {o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    words = set(re.split(r"[\s,/│]+", result.output))
    assert flags and flags <= words, sorted(flags - words)
    assert "…" not in "".join(w for w in words if w.startswith("--"))


def test_a_table_too_wide_for_its_words_shows_each_row_as_a_block():
    table = Table("t", ["name", "settings"], [["a", "--a-very-long-flag-name-indeed (1)"]])
    wide, narrow = ui.render(table, width=60), ui.render(table, width=36)
    assert type(wide).__name__ == "Table" and type(narrow).__name__ == "Group"
    with ui.console.capture() as cap:
        ui.console.print(narrow, width=44)
    assert "\n    settings: --a-very-long-flag-name-indeed\n" in cap.get()


def test_help_and_the_listings_need_no_torch(tmp_path):
    """`prunelab --help` never imports torch; a listing imports it the first time (to read the
    registries), then reads its tables back while prunelab's files are unchanged."""
    code = (
        "import sys; from prunelab.cli import main; code = main(sys.argv[1:]); "
        "print('torch' in sys.modules, code)"
    )
    env = {"XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "100", "PATH": "/usr/bin:/bin"}
    env |= {"PYTHONPATH": ":".join(p for p in sys.path if p)}

    def torch_imported(*args: str) -> bool:
        done = subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, done.stderr
        imported, status = done.stdout.split()[-2:]
        assert status == "0", done.stdout
        return imported == "True"

    assert not torch_imported("--help")
    assert torch_imported("methods") and not torch_imported("methods")
    assert not torch_imported("treatments", "--help")


def test_help_shows_no_type_label_for_flags(capsys):
    assert main(["--help"]) == 0
    assert main(["report", "--help"]) == 0
    assert "<bool>" not in capsys.readouterr().out


# the shared options: the commands that read results take --root, those that load data or build a
# model --data-dir and --threads (defined once in prunelab.cli.options)
STORE = {"run", "demo", "ls", "show", "report", "compare", "sweep", "count", "export", "shrink", "bench"}
STORE |= {"similarity", "effective", "stability", "ensemble", "mask-plot", "heads", "sensitivity", "train"}
MODELS = STORE - {"ls", "show", "compare", "bench"}


def option(name: str, option: str):
    from prunelab.cli import LazyGroup

    group = typer.main.get_command(app)
    assert isinstance(group, LazyGroup)
    command = group.get_command(typer.Context(group), name)
    return next((p for p in command.params if option in getattr(p, "opts", ())), None)


@pytest.mark.parametrize("name", sorted(STORE | MODELS))
def test_every_command_that_can_use_a_shared_option_has_it(name):
    shared = {"--root": Root, "--data-dir": DataDir, "--threads": Threads}
    wanted = ["--root"] + (["--data-dir", "--threads"] if name in MODELS else [])
    for flag in wanted:
        param = option(name, flag)
        assert param is not None, f"{name} has no {flag}"
        help_text = shared[flag].__metadata__[0].help
        assert param.help == help_text, f"{name} {flag} is not the shared option"


def test_report_takes_threads_and_count_takes_data_dir_again():
    assert option("report", "--threads") is not None and option("count", "--data-dir") is not None
    assert {name for name, _ in COMMANDS} >= STORE


def test_data_dir_counts_for_every_lookup_of_the_command(tmp_path, capsys, monkeypatch):
    """`--data-dir` is searched by every lookup while the command runs (here `data list`), not after."""
    from prunelab.cache import data_search_dirs

    (tmp_path / "mnist").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (tmp_path / "mnist" / name).write_bytes(b"")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(b"")
    monkeypatch.setattr(ui.console, "_width", 200)
    assert main(["data", "list", "--data-dir", str(tmp_path)]) == 0
    assert re.search(r"mnist .*found .*" + re.escape(str(tmp_path)), capsys.readouterr().out)
    assert data_search_dirs() == ()


def test_an_unknown_command_is_named_with_the_closest(capsys):
    assert main(["methds"]) == 2
    assert "Did you mean 'methods'?" in capsys.readouterr().err


def test_a_command_is_built_with_its_spec_flags_on_demand():
    from prunelab.cli.experiments import run

    command = build_command("run", run)
    assert {"--rate", "--method", "--treatment"} <= {o for p in command.params for o in p.opts}
