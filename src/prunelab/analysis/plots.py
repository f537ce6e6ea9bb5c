"""Plots for the report: accuracy against density, learning, masks, similarity, stability, agreement.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no display, no
global state), and saved as PNG and SVG. Each method has a fixed colour in every plot and report
(treatments differ by line style), so a figure can be read against any other.
"""

from __future__ import annotations

import hashlib
import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from prunelab.errors import SpecError
from prunelab.experiments.store import StoredExperiment
from prunelab.experiments.summary import level_rows
from prunelab.io import atomic_write_bytes
from prunelab.stats import mean_std

METHOD_COLORS = {
    "magnitude": "#1f77b4",
    "l1-structured": "#ff7f0e",
    "random": "#2ca02c",
    "hybrid": "#d62728",
    "l2-structured": "#9467bd",
    "linf-structured": "#8c564b",
    "lninf-structured": "#e377c2",
    "random-structured": "#bcbd22",
    "snip": "#17becf",
    "grasp": "#7f7f7f",
    "synflow": "#aec7e8",
    "large_final": "#393b79",
    "magnitude_increase": "#ffbb78",
    "movement": "#98df8a",
}
_EXTRA = ["#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#637939", "#8c6d31", "#843c39"]
TREATMENT_STYLES = {"rewind": "-", "finetune": "--", "reinit": ":", "sign": "-.", "sigma-sign": "-."}
PRUNED_GREY = (0.78, 0.78, 0.78)
WEIGHT_CMAP = "RdBu_r"  # negative blue, positive red, as in Paganini & Forde 2020, Fig. 5


def method_color(method: str) -> str:
    """A fixed colour per method name; unknown names get a stable colour from a hash of the name."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _EXTRA[int(hashlib.sha256(method.encode()).hexdigest(), 16) % len(_EXTRA)]


@dataclass(frozen=True)
class Style:
    color: str
    linestyle: str = "-"

    @property
    def hatch(self) -> str | None:
        """Bars cannot have line styles: treatments other than the solid one get a hatch."""
        return {"-": None, "--": "//", ":": "..", "-.": "xx"}.get(self.linestyle)


def styles(exps: Sequence[StoredExperiment]) -> list[Style]:
    """Colour by method, line style by treatment; repeats of both fall back to colours by label."""
    keys = [(e.spec.pruning.method, e.spec.treatment.kind) for e in exps]
    out = []
    for e, key in zip(exps, keys, strict=True):
        color = method_color(key[0]) if keys.count(key) == 1 else method_color(e.spec.label())
        out.append(Style(color, TREATMENT_STYLES.get(key[1], "-")))
    return out


def new_figure(width: float = 6.4, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), layout="tight")
    FigureCanvasAgg(fig)
    return fig


def set_title(ax, text: str, **kw) -> None:
    """``ax.set_title`` wrapped to the figure's width, so that a long experiment name is never cut off
    at the figure's edges (the tight layout then makes room for its lines)."""
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties

    points = FontProperties(size=kw.get("fontsize", rcParams["axes.titlesize"])).get_size_in_points()
    chars = max(16, int(0.8 * ax.figure.get_figwidth() * 72 / (0.6 * points)))
    ax.set_title(textwrap.fill(text, chars), **kw)


def render(fig: Figure, formats: Sequence[str] = ("png", "svg"), dpi: int = 110) -> dict[str, bytes]:
    """The figure in each format; the layout is computed once, for the first (it is the slow part)."""
    out = {}
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi)
        fig.set_layout_engine("none")
        out[fmt] = buf.getvalue()
    return out


def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    return render(fig, (fmt,))[fmt]


FIGURE_FORMATS = ("png", "svg", "pdf")


def figure_format(path: str | Path) -> str:
    """The format a figure file's name asks for; a name without .png, .svg or .pdf is refused."""
    fmt = Path(path).suffix.lstrip(".").lower()
    if fmt not in FIGURE_FORMATS:
        raise SpecError(f"plot file {path}: use a name ending in .png, .svg or .pdf")
    return fmt


def write_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (atomically) in the format its name asks for; returns the path."""
    atomic_write_bytes(path, figure_bytes(fig, figure_format(path)))
    return Path(path)


def save_figure(fig: Figure, stem: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` (atomically); returns the paths."""
    paths = []
    for fmt, data in render(fig, formats).items():
        path = Path(f"{stem}.{fmt}")
        atomic_write_bytes(path, data)
        paths.append(path)
    return paths


def _density_axis(ax, label: str = "weights remaining") -> None:
    """Log-scale density, dense on the left, sparser to the right."""
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = [m * 10.0**e for e in range(0, -5, -1) for m in (1, 0.7, 0.5, 0.3, 0.2)]
    lo, hi = sorted(ax.get_xlim())
    ax.set_xticks([t for t in ticks if lo <= t <= hi] or ticks[:1])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}%" if v < 0.01 else f"{v:.0%}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel(label)
    ax.grid(True, which="major", alpha=0.3)


def _line(ax, x, mean, std, style: Style, label: str, marker: str = "o") -> None:
    x, mean, std = (np.asarray(v, dtype=float) for v in (x, mean, std))
    ax.plot(x, mean, marker=marker, ms=3.5, color=style.color, linestyle=style.linestyle, label=label)
    ax.fill_between(x, mean - std, mean + std, color=style.color, alpha=0.15, linewidth=0)


def plot_accuracy(
    exps: Sequence[StoredExperiment],
    names: Sequence[str],
    *,
    metric: str = "test_acc",
    effective: dict[str, list[dict]] | None = None,
    controls: bool = True,
) -> Figure:
    """Accuracy against density (log), mean ± std over seeds, one line per experiment (controls
    dotted), with the dense accuracy as a reference line. With ``effective`` (experiment id ->
    rows of :func:`~prunelab.analysis.effective.effective_levels`) the x-axis is effective density."""
    fig = new_figure()
    ax = fig.add_subplot()
    dense = []
    for exp, name, style in zip(exps, names, styles(exps), strict=True):
        rows = level_rows(exp, metric)
        if not rows:
            continue
        if effective is not None:
            eff = effective[exp.id]
            x = [
                mean_std([r["effective_density"] for r in eff if r["level"] == row["level"]])[0]
                for row in rows
            ]
        else:
            x = [r["density"] for r in rows]
        _line(ax, x, [r["ticket"][0] for r in rows], [r["ticket"][1] for r in rows], style, name)
        dense.append(rows[0]["ticket"][0])
        if controls and effective is None:
            for control, marker in zip(exp.controls, "sD^v", strict=False):
                pts = [(r["density"], *r[control]) for r in rows if r.get(control)]
                if pts:
                    xs, ms, ss = zip(*pts, strict=True)
                    _line(ax, xs, ms, ss, Style(style.color, ":"), f"{name} ({control} control)", marker)
    if dense:
        ax.axhline(float(np.mean(dense)), color="black", lw=1, ls="--", alpha=0.6, label="dense")
    _density_axis(
        ax, "effective density (weights on an input-output path)" if effective else "weights remaining"
    )
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{metric.replace('_', ' ')} against {'effective ' if effective else ''}density")
    ax.legend(fontsize=8)
    return fig


def plot_layer_density(exps: Sequence[StoredExperiment], names: Sequence[str]) -> Figure:
    """Each pruned layer's density at each experiment's last finished level (its first seed): how a
    method spread its sparsity (OWL's block rates, a global threshold's choices)."""
    fig = new_figure(max(6.4, 0.18 * max(len(exps[0].levels[min(exps[0].levels)][0].layer_density), 20)), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(exps))
    labels: list[str] = []
    for k, (exp, name, style) in enumerate(zip(exps, names, styles(exps), strict=True)):
        seed = min(exp.levels)
        last = exp.levels[seed][max(exp.levels[seed])]
        layers = list(last.layer_density)
        labels = labels or layers
        xs = [labels.index(n) + k * width for n in layers if n in labels]
        ax.bar(
            xs, [last.layer_density[n] for n in layers if n in labels], width, color=style.color, label=name
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
    ax.set_xticklabels([n.removesuffix(".weight") for n in labels], rotation=90, fontsize=6)
    ax.set_ylabel("density (weights kept)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_early_stop(exps: Sequence[StoredExperiment], names: Sequence[str]) -> Figure:
    """Early-stop iteration (minimum validation loss) against density: the learning speed."""
    fig = new_figure()
    ax = fig.add_subplot()
    for exp, name, style in zip(exps, names, styles(exps), strict=True):
        rows = [r for r in level_rows(exp) if r["early_stop"]]
        _line(
            ax, [r["density"] for r in rows], *zip(*(r["early_stop"] for r in rows), strict=True), style, name
        )
    _density_axis(ax)
    ax.set_ylabel("early-stop iteration")
    ax.set_title("Learning speed: iteration of minimum validation loss")
    ax.legend(fontsize=8)
    return fig


def plot_learning_curves(
    exp: StoredExperiment, name: str, seed: int | None = None, metric: str = "val_acc"
) -> Figure:
    """``metric`` against training iteration, one line per level (darker = sparser), one seed.

    Validation metrics are recorded at every evaluation; the test set only where it is needed
    (the final and the early-stop weights), so test curves have those points only."""
    seed = sorted(exp.levels)[0] if seed is None else seed
    levels = exp.levels[seed]
    fig = new_figure()
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    for i, (level, m) in enumerate(sorted(levels.items())):
        hist = [h for h in m.history if getattr(h, metric) is not None]
        ax.plot(
            [h.iteration for h in hist],
            [getattr(h, metric) for h in hist],
            color=cmap(i / max(1, len(levels) - 1)),
            label=f"level {level} ({m.density:.1%})",
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric.replace("_", " "))
    set_title(ax, f"Learning curves per level: {name}, seed {seed}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def mask_image(
    weight: torch.Tensor, mask: torch.Tensor, max_units: int = 64
) -> tuple[np.ndarray, str, float]:
    """RGBA image of masked weights (red +, blue -, grey pruned): a conv weight as a grid of kernels
    (rows = input channels, columns = output channels), a linear weight as an (out x in) image."""
    w = weight.detach().float().cpu()
    m = mask.bool().cpu()
    note = ""
    if w.dim() > 2:
        w, m = w.flatten(2)[:max_units, :max_units], m.flatten(2)[:max_units, :max_units]
        kh = weight.shape[2]
        kw = int(np.prod(weight.shape[3:])) if weight.dim() > 3 else 1
        if weight.shape[0] > max_units or weight.shape[1] > max_units:
            note = f" (first {max_units} channels)"
        out_c, in_c = w.shape[:2]
        vals = np.full((in_c * (kh + 1) - 1, out_c * (kw + 1) - 1), np.nan)
        kept = np.zeros_like(vals, dtype=bool)
        sep = np.ones_like(vals, dtype=bool)
        for o in range(out_c):
            for i in range(in_c):
                r, c = i * (kh + 1), o * (kw + 1)
                vals[r : r + kh, c : c + kw] = w[o, i].reshape(kh, kw).numpy()
                kept[r : r + kh, c : c + kw] = m[o, i].reshape(kh, kw).numpy()
                sep[r : r + kh, c : c + kw] = False
    else:
        vals, kept = w.numpy().astype(float), m.numpy()
        sep = np.zeros_like(kept)
    from matplotlib import colormaps

    scale = float(np.nanmax(np.abs(np.where(kept, vals, 0)))) or 1.0
    rgba = colormaps[WEIGHT_CMAP](TwoSlopeNorm(0, -scale, scale)(np.nan_to_num(vals)))
    rgba[~kept] = (*PRUNED_GREY, 1.0)
    rgba[sep] = (1.0, 1.0, 1.0, 1.0)
    return rgba, note, scale


def plot_mask(weight: torch.Tensor, mask: torch.Tensor, title: str, max_units: int = 64) -> Figure:
    """Paganini & Forde 2020, Fig. 5: a layer's kept weights coloured by sign and size, pruned ones grey."""
    img, note, scale = mask_image(weight, mask, max_units)
    conv = weight.dim() > 2
    h, w = img.shape[:2]
    fig = new_figure(
        min(12.0, max(4.0, 0.9 + w / 12 if conv else 6.4)), min(9.0, max(3.0, 1.2 + h / 12 if conv else 4.5))
    )
    ax = fig.add_subplot()
    ax.imshow(img, interpolation="nearest", aspect="equal" if conv else "auto")
    keep = mask.bool()
    set_title(ax, f"{title}{note}: {float(keep.float().mean()):.1%} kept", fontsize=9)
    if conv:
        kh, kw = weight.shape[2], int(np.prod(weight.shape[3:])) if weight.dim() > 3 else 1
        ax.set_xlabel("output channel")
        ax.set_ylabel("input channel")
        out_c, in_c = min(weight.shape[0], max_units), min(weight.shape[1], max_units)
        step_o, step_i = max(1, out_c // 16), max(1, in_c // 16)
        ax.set_xticks(
            [o * (kw + 1) + (kw - 1) / 2 for o in range(0, out_c, step_o)],
            [str(o) for o in range(0, out_c, step_o)],
            fontsize=7,
        )
        ax.set_yticks(
            [i * (kh + 1) + (kh - 1) / 2 for i in range(0, in_c, step_i)],
            [str(i) for i in range(0, in_c, step_i)],
            fontsize=7,
        )
    else:
        ax.set_xlabel("input unit")
        ax.set_ylabel("output unit")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    mappable = ScalarMappable(TwoSlopeNorm(0, -scale, scale), WEIGHT_CMAP)
    fig.colorbar(mappable, ax=ax, shrink=0.6 if conv else 0.9, label="weight (grey: pruned)")
    return fig


def plot_similarity(
    series: dict[str, list[dict]],
    colors: dict[str, Style] | None = None,
    metric: str = "jaccard_distance",
    title: str = "",
) -> Figure:
    """One panel per layer: ``metric`` (mean ± std over seeds) against level, a line per comparison.

    ``series`` maps a comparison's name to rows from :mod:`prunelab.analysis.similarity`.
    """
    layers = list(dict.fromkeys(r["layer"] for rows in series.values() for r in rows))
    fig, axes = _panels(len(layers) + 1, 3.3, 2.6)  # the last panel holds the legend
    for ax, layer in zip(axes, layers, strict=False):
        for k, (name, rows) in enumerate(series.items()):
            by_level: dict[int, list[float]] = {}
            for r in rows:
                if r["layer"] == layer:
                    by_level.setdefault(r["level"], []).append(r[metric])
            lv = sorted(by_level)
            stats = [mean_std(by_level[x]) for x in lv]
            style = (colors or {}).get(name, Style(f"C{k % 10}"))
            _line(ax, lv, [s[0] for s in stats], [s[1] for s in stats], style, name)
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("pruning level", fontsize=8)
        ax.set_ylabel(metric.replace("_", " "), fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    legend_ax = axes[len(layers)]
    legend_ax.axis("off")
    if layers:
        legend_ax.legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize=7, frameon=False)
    fig.suptitle(title or f"Mask {metric.replace('_', ' ')} per layer")
    return fig


def _panels(n: int, width: float, height: float, cols: int = 3) -> tuple[Figure, list]:
    """A grid of ``n`` panels (unused cells hidden), at most ``cols`` per row."""
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig = new_figure(width * cols + 0.4, height * rows + 0.6)
    axes = list(fig.subplots(rows, cols, squeeze=False).flatten())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_stability(summaries: dict[str, list[dict]], colors: dict[str, Style] | None = None) -> Figure:
    """Paganini & Forde 2020, Fig. 8: mean |w_i - w_{i-1}| per layer, a bar per experiment (lower = more stable)."""
    layers = list(dict.fromkeys(r["layer"] for rows in summaries.values() for r in rows))
    fig = new_figure(max(6.4, 1.1 * len(layers) + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(summaries))
    for k, (name, rows) in enumerate(summaries.items()):
        val = {r["layer"]: (r["mean_abs_change"], r["std"]) for r in rows}
        x = np.arange(len(layers)) + (k - (len(summaries) - 1) / 2) * width
        mean = [val.get(layer, (np.nan, 0))[0] for layer in layers]
        err = [val.get(layer, (0, 0))[1] for layer in layers]
        style = (colors or {}).get(name, Style(f"C{k % 10}"))
        ax.bar(
            x,
            mean,
            width,
            yerr=err,
            color=style.color,
            hatch=style.hatch,
            edgecolor="white",
            label=name,
            capsize=2,
        )
    ax.set_xticks(np.arange(len(layers)), layers, rotation=30 if len(layers) > 6 else 0, fontsize=8)
    ax.set_ylabel(r"mean $|w_i - w_{i-1}|$")
    ax.set_title("Weight stability (lower = more stable)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def plot_trajectories(traj, title: str, color: str = "#1f77b4") -> Figure:
    """Paganini & Forde 2020, Figs. 6, 7: each weight's final value per level, the line ending when it is pruned."""
    fig = new_figure()
    ax = fig.add_subplot()
    x = np.arange(len(traj.levels))
    for row in traj.values:
        ax.plot(x, row, color=color, alpha=0.25, lw=0.7)
        alive = np.flatnonzero(~np.isnan(row))
        if len(alive) and alive[-1] < len(x) - 1:
            ax.plot(x[alive[-1]], row[alive[-1]], "x", color="black", ms=3, alpha=0.5)
    ax.set_xticks(
        x, [f"{lv}\n{d:.0%}" for lv, d in zip(traj.levels, traj.densities, strict=True)], fontsize=7
    )
    ax.set_xlabel("level (layer density)")
    ax.set_ylabel("final weight value")
    set_title(ax, f"{title}: {len(traj.values)} weights of {traj.layer} (x = pruned next)", fontsize=9)
    ax.grid(True, alpha=0.3)
    return fig


def plot_agreement(names: Sequence[str], agreement: torch.Tensor | np.ndarray, title: str = "") -> Figure:
    """Paganini & Forde 2020, Fig. 14: fraction of test examples on which two subnetworks predict the same class."""
    a = np.asarray(agreement, dtype=float)
    n = len(names)
    fig = new_figure(2.2 + 0.9 * n, 1.6 + 0.8 * n)
    ax = fig.add_subplot()
    im = ax.imshow(a, cmap="viridis", vmin=min(0.5, float(a.min())), vmax=1.0)
    ax.set_xticks(range(n), names, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{a[i, j]:.3f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if a[i, j] < 0.8 else "black",
            )
    fig.colorbar(im, ax=ax, shrink=0.8, label="agreement")
    set_title(ax, title or "Prediction agreement")
    return fig


def plot_unit_density(densities: dict[str, dict[str, torch.Tensor]], title: str) -> Figure:
    """Histograms of each unit's kept fraction of incoming weights, one panel per layer."""
    layers = list(densities)
    fig, axes = _panels(max(1, len(layers)), 3.0, 2.3)
    for ax, layer in zip(axes, layers, strict=False):
        ax.hist(densities[layer]["in"].numpy(), bins=np.linspace(0, 1, 21), color="#4c72b0")
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("kept fraction of incoming weights", fontsize=8)
        ax.set_ylabel("units", fontsize=8)
    fig.suptitle(title)
    return fig


__all__ = [
    "METHOD_COLORS",
    "Style",
    "figure_bytes",
    "mask_image",
    "method_color",
    "new_figure",
    "plot_accuracy",
    "plot_agreement",
    "plot_early_stop",
    "plot_learning_curves",
    "plot_mask",
    "plot_similarity",
    "plot_stability",
    "plot_trajectories",
    "plot_unit_density",
    "save_figure",
    "styles",
]
