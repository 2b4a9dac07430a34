"""The paper's figures as PNG files, drawn from result rows alone (matplotlib, Agg backend).

Every function takes rows as ``results.read_rows`` returns them (dicts of strings) and writes
one PNG; nothing here imports TensorFlow, so ``--replot`` redraws every figure of an output
folder from its CSV files in seconds. Axes carry units; titles carry the settings a reader
needs to judge the figure (network, data set, BN mode and evaluation batch, batch sizes,
epochs, seed or trials, sharpness solver and eps). A PNG is written to a temporary file and
renamed, so a crash never leaves half an image.
"""

from __future__ import annotations

import collections
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend is chosen first)
from matplotlib import colors, ticker  # noqa: E402

Row = Mapping[str, str]
SB_COLOR, LB_COLOR = "tab:blue", "tab:red"
LOSS_COLOR, ACCURACY_COLOR = "tab:blue", "tab:red"
DPI = 100


class PlotError(ValueError):
    """Rows that cannot make the asked figure (none, or of another kind)."""


def number(text) -> float:
    """A CSV cell as a float (NaN for an empty cell)."""
    return math.nan if text in ("", None) else float(text)


def save(figure, path: str) -> str:
    """Writes ``figure`` to ``path`` (PNG) through a temporary file; closes the figure."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".png", delete=False) as handle:
        figure.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    os.chmod(handle.name, 0o644)
    os.replace(handle.name, path)
    return path


def bn_text(row: Row) -> str:
    """The BN mode in words, with the evaluation batch where it matters."""
    if row["bn_mode"] == "batch":
        return f"BN with batch statistics (eval batch {row['eval_batch_size']})"
    return "BN with moving averages"


def _pair_settings(row: Row) -> str:
    return (f"{row['model']} on {row['dataset']}, {bn_text(row)}; SB batch "
            f"{row['sb_batch_size']} ({row['sb_epochs']} epochs) and LB batch "
            f"{row['lb_batch_size']} ({row['lb_epochs']} epochs) from one x0 (seed "
            f"{row['seed']}), {row['optimizer']} lr {number(row['learning_rate']):g}")


def readable_log_axis(axis, which: str = "y") -> None:
    """Plain numbers on a log axis spanning less than two decades (matplotlib's default
    labels only the powers of ten there, often a single tick)."""
    low, high = axis.get_ylim() if which == "y" else axis.get_xlim()
    if low > 0 and high / low < 100:
        target = axis.yaxis if which == "y" else axis.xaxis
        target.set_major_formatter(ticker.FormatStrFormatter("%g"))
        target.set_minor_formatter(ticker.FormatStrFormatter("%g"))


def _rows_of(rows: Iterable[Row], kind: str) -> list[Row]:
    selected = [row for row in rows if row["kind"] == kind]
    if not selected:
        raise PlotError(f"no {kind!r} rows to plot: run the experiment first")
    return selected


# --- Fig. 3 / Fig. 7 and the landscape around each minimizer --------------------------------

_PATH_TITLES = {
    "linear": "Fig. 3: f(α·x_LB + (1−α)·x_SB)",
    "curvilinear": "Fig. 7: f(sin(απ/2)·x_LB + cos(απ/2)·x_SB)",
}


def parametric_plot(rows: Iterable[Row], kind: str, path: str) -> str:
    """Cross-entropy (left axis) and accuracy (right axis) of train and test along the path
    ``kind`` ("linear" or "curvilinear") against alpha; x_SB at 0, x_LB at 1."""
    points = sorted(_rows_of(rows, kind), key=lambda row: number(row["alpha"]))
    alpha = [number(row["alpha"]) for row in points]
    figure, loss_axis = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    accuracy_axis = loss_axis.twinx()
    for split, style in (("train", "-"), ("test", "--")):
        loss_axis.plot(alpha, [number(row[f"{split}_loss"]) for row in points], style,
                       color=LOSS_COLOR, marker="o", markersize=3, label=f"{split} loss")
        accuracy_axis.plot(alpha, [100 * number(row[f"{split}_accuracy"]) for row in points],
                           style, color=ACCURACY_COLOR, marker="s", markersize=3,
                           label=f"{split} accuracy")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("α  (0: SB minimizer, 1: LB minimizer)")
    loss_axis.set_ylabel("cross-entropy (nats, log scale)", color=LOSS_COLOR)
    accuracy_axis.set_ylabel("accuracy (%)", color=ACCURACY_COLOR)
    accuracy_axis.set_ylim(0, 100)
    for x, name in ((0, "SB"), (1, "LB")):
        loss_axis.axvline(x, color="grey", linewidth=0.8, linestyle=":")
        loss_axis.annotate(f" {name}", (x, 0.98), xycoords=("data", "axes fraction"),
                           ha="left", va="top", fontsize=8, color="grey")
    handles = loss_axis.get_legend_handles_labels()
    extra = accuracy_axis.get_legend_handles_labels()
    loss_axis.legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper center",
                     bbox_to_anchor=(0.5, -0.14), fontsize=8, ncol=4)
    first = points[0]
    figure.suptitle(f"{_PATH_TITLES[kind]}\n{_pair_settings(first)}\n"
                    f"exact evaluation on {first['train_examples']} training and "
                    f"{first['test_examples']} test examples", fontsize=9)
    return save(figure, path)


def slices_plot(rows: Iterable[Row], path: str) -> str:
    """Training (solid) and test (dashed) cross-entropy along random filter-normalised
    directions through each minimizer; one line per direction, SB blue, LB red."""
    points = _rows_of(rows, "slice")
    lines = collections.defaultdict(list)
    for row in points:
        lines[(row["center"], row["direction"])].append(row)
    figure, axis = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    for (center, direction), line in sorted(lines.items()):
        line.sort(key=lambda row: number(row["alpha"]))
        steps = [number(row["alpha"]) for row in line]
        color = SB_COLOR if center == "SB" else LB_COLOR
        first = direction == "0"
        axis.plot(steps, [number(row["train_loss"]) for row in line], "-", color=color,
                  marker="o", markersize=3, label=f"{center} train" if first else None)
        axis.plot(steps, [number(row["test_loss"]) for row in line], "--", color=color,
                  label=f"{center} test" if first else None)
    axis.set_yscale("log")
    axis.set_xlabel("step t along a random filter-normalised direction d  (x + t·d)")
    axis.set_ylabel("cross-entropy (nats, log scale)")
    axis.legend(fontsize=8)
    first = points[0]
    directions = len({row["direction"] for row in points})
    figure.suptitle(
        f"1-D loss slices around each minimizer ({directions} directions each, biases and BN "
        f"γ/β: {first['bias_bn']})\n{_pair_settings(first)}\ntraining loss on "
        f"{first['train_examples']} training examples, test loss on {first['test_examples']}",
        fontsize=9)
    return save(figure, path)


def contours_plot(rows: Iterable[Row], path: str) -> str:
    """Training cross-entropy on the 2-D filter-normalised grid around SB (left) and LB
    (right), on one logarithmic colour scale."""
    points = _rows_of(rows, "contour")
    losses = [number(row["train_loss"]) for row in points]
    finite = [value for value in losses if math.isfinite(value) and value > 0]
    if not finite:
        raise PlotError("the contour rows hold no finite positive loss to plot")
    norm = colors.LogNorm(vmin=min(finite), vmax=max(finite))
    levels = [min(finite) * (max(finite) / min(finite)) ** (k / 14) for k in range(15)]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True, layout="constrained")
    mappable = None
    for axis, center in zip(axes, ("SB", "LB"), strict=True):
        mine = [row for row in points if row["center"] == center]
        ts = sorted({number(row["alpha"]) for row in mine})
        us = sorted({number(row["beta"]) for row in mine})
        grid = {(number(row["alpha"]), number(row["beta"])): number(row["train_loss"])
                for row in mine}
        z = [[grid.get((t, u), math.nan) for t in ts] for u in us]
        if len(ts) > 1 and len(us) > 1 and len(set(levels)) > 1:
            mappable = axis.contourf(ts, us, z, levels=levels, norm=norm, cmap="viridis",
                                     extend="both")
            axis.contour(ts, us, z, levels=levels, colors="white", linewidths=0.4)
        axis.plot([0], [0], marker="*", color="white", markersize=10)
        axis.set_title(f"around the {center} minimizer", fontsize=9)
        axis.set_xlabel("t along d₀ (filter-normalised)")
    axes[0].set_ylabel("u along d₁ (filter-normalised)")
    if mappable is not None:
        figure.colorbar(mappable, ax=list(axes), ticks=levels[::2], format="%.3g",
                        label="training cross-entropy (nats)")
    first = points[0]
    figure.suptitle(f"Training loss f(x + t·d₀ + u·d₁) on {first['train_examples']} training "
                    f"examples\n{_pair_settings(first)}", fontsize=9)
    return save(figure, path)


def parametric_figures(rows: Sequence[Row], output_dir: str) -> list[str]:
    """Every figure of every parametric experiment in ``rows``, named after its experiment
    id: ``fig3_linear_<id>.png``, ``fig7_curvilinear_<id>.png``, ``slices_<id>.png``,
    ``contours_<id>.png`` (each when its rows exist). Returns the paths written."""
    by_experiment = collections.defaultdict(list)
    for row in rows:
        by_experiment[row["experiment_id"]].append(row)
    if not by_experiment:
        raise PlotError("no parametric rows to plot: run the experiment first")
    written = []
    for experiment, mine in sorted(by_experiment.items()):
        kinds = {row["kind"] for row in mine}
        for kind, figure in (("linear", "fig3"), ("curvilinear", "fig7")):
            if kind in kinds:
                written.append(parametric_plot(
                    mine, kind, os.path.join(output_dir, f"{figure}_{kind}_{experiment}.png")))
        if "slice" in kinds:
            written.append(slices_plot(mine, os.path.join(output_dir,
                                                          f"slices_{experiment}.png")))
        if "contour" in kinds:
            written.append(contours_plot(mine, os.path.join(output_dir,
                                                            f"contours_{experiment}.png")))
    return written


# --- trial curves with mean ± std bands (Fig. 4, Fig. 5) ------------------------------------

SHARPNESS_SETTING = ("sharpness_subspace", "sharpness_subspace_dim", "sharpness_solver",
                     "sharpness_epsilon", "sharpness_max_iter", "sharpness_eval_examples")


def sharpness_text(row: Row, prefix: str = "sharpness_") -> str:
    """A sharpness setting in words, e.g. "full space, lbfgsb 10 it., ε=0.001, 10000 ex."."""
    space = "full space" if row[f"{prefix}subspace"] == "full" else \
        f"random subspace p={row[f'{prefix}subspace_dim']}"
    return (f"{space}, {row[f'{prefix}solver']} {row[f'{prefix}max_iter']} it., "
            f"ε={number(row[f'{prefix}epsilon']):g}, {row[f'{prefix}eval_examples']} train ex.")


def trial_curves(axis, rows: Sequence[Row], x_column: str, value, *, color="tab:blue",
                 label: str | None = None) -> None:
    """One thin line per trial (``trial`` column) of value(row) against ``x_column``, and the
    mean over trials with a ±1 sample-std band where two or more trials share an x."""
    by_trial = collections.defaultdict(list)
    for row in rows:
        by_trial[row["trial"]].append(row)
    by_x = collections.defaultdict(list)
    styles = ("-", "--", ":", "-.")
    for index, (trial, mine) in enumerate(sorted(by_trial.items())):
        mine.sort(key=lambda row: number(row[x_column]))
        xs = [number(row[x_column]) for row in mine]
        ys = [value(row) for row in mine]
        axis.plot(xs, ys, styles[index % len(styles)], color=color, alpha=0.5, linewidth=1,
                  marker=".",
                  label=f"trial {trial}" if len(by_trial) > 1 and label is None else None)
        for x, y in zip(xs, ys, strict=True):
            by_x[x].append(y)
    xs = sorted(by_x)
    means = [sum(by_x[x]) / len(by_x[x]) for x in xs]
    axis.plot(xs, means, "-", color=color, linewidth=2, marker="o", markersize=4,
              label=label or ("mean" if len(by_trial) > 1 else None))
    if len(by_trial) > 1:
        stds = [_std(by_x[x]) for x in xs]
        axis.fill_between(xs, [m - s for m, s in zip(means, stds, strict=True)],
                          [m + s for m, s in zip(means, stds, strict=True)], color=color,
                          alpha=0.2, linewidth=0, label="mean ± std" if label is None else None)


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _settings_groups(rows: Sequence[Row]) -> list[list[Row]]:
    groups = collections.defaultdict(list)
    for row in rows:
        groups[tuple(row[c] for c in SHARPNESS_SETTING)].append(row)
    return [groups[key] for key in sorted(groups)]


def _run_settings(row: Row, trials: int) -> str:
    return (f"{row['model']} on {row['dataset']}, {bn_text(row)}, {row['optimizer']} lr "
            f"{number(row['learning_rate']):g}, {trials} trial{'s' if trials > 1 else ''}")


def sweep_plot(rows: Sequence[Row], path: str) -> str:
    """Fig. 4: test accuracy and the sharpness of the final iterate against the GLOBAL batch
    size (log axis), one panel per sharpness setting; thin lines are trials."""
    if not rows:
        raise PlotError("no batch-sweep rows to plot: run the sweep first")
    groups = _settings_groups(rows)
    figure, axes = plt.subplots(1, 1 + len(groups), figsize=(5 * (1 + len(groups)), 4.4),
                               layout="constrained")
    accuracy_rows = list({(row["run_id"]): row for row in rows}.values())
    trial_curves(axes[0], accuracy_rows, "batch_size",
                 lambda row: 100 * number(row["test_accuracy"]), color="tab:green")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].set_title("test accuracy of the final iterate", fontsize=9)
    for axis, group in zip(axes[1:], groups, strict=True):
        trial_curves(axis, group, "batch_size", lambda row: number(row["sharpness"]),
                     color="tab:purple")
        axis.set_yscale("log")
        readable_log_axis(axis)
        axis.set_ylabel("sharpness (Metric 2.1, %)")
        axis.set_title(f"sharpness: {sharpness_text(group[0])}", fontsize=9)
    batch_sizes = sorted({int(row["batch_size"]) for row in rows})
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xticks(batch_sizes, [str(b) for b in batch_sizes], rotation=45)
        axis.xaxis.set_minor_locator(ticker.NullLocator())
        axis.set_xlabel("GLOBAL batch size")
        axis.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    first = rows[0]
    trials = len({row["trial"] for row in rows})
    epochs = sorted({row["epochs_run"] for row in rows}, key=int)
    figure.suptitle(f"Fig. 4: batch-size sweep from one x0 per trial, {'/'.join(epochs)} "
                    f"epochs per run\n{_run_settings(first, trials)}", fontsize=9)
    return save(figure, path)


def warm_start_plot(rows: Sequence[Row], path: str) -> str:
    """Fig. 5: test accuracy and sharpness of each warm-started LB solution against the SB
    epochs it started from, one panel per sharpness setting; thin lines are trials."""
    if not rows:
        raise PlotError("no warm-start rows to plot: run the warm-start experiment first")
    groups = _settings_groups(rows)
    figure, axes = plt.subplots(1, 1 + len(groups), figsize=(5 * (1 + len(groups)), 4.4),
                                layout="constrained")
    accuracy_rows = list({row["lb_run_id"]: row for row in rows}.values())
    trial_curves(axes[0], accuracy_rows, "start_epoch",
                 lambda row: 100 * number(row["test_accuracy"]), color="tab:green")
    axes[0].set_ylabel("test accuracy of the LB solution (%)")
    axes[0].set_title("test accuracy after the LB epochs", fontsize=9)
    for axis, group in zip(axes[1:], groups, strict=True):
        trial_curves(axis, group, "start_epoch", lambda row: number(row["sharpness"]),
                     color="tab:purple")
        axis.set_yscale("log")
        readable_log_axis(axis)
        axis.set_ylabel("sharpness of the LB solution (Metric 2.1, %)")
        axis.set_title(f"sharpness: {sharpness_text(group[0])}", fontsize=9)
    starts = sorted({int(row["start_epoch"]) for row in rows})
    for axis in axes:
        axis.set_xticks(starts)
        axis.set_xlabel("SB epochs before switching to LB (0: LB from x0)")
        axis.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    first = rows[0]
    trials = len({row["trial"] for row in rows})
    figure.suptitle(
        f"Fig. 5: LB (batch {first['lb_batch_size']}, {first['lb_epochs']} epochs, fresh "
        f"optimizer) warm-started from SB (batch {first['sb_batch_size']}) iterates\n"
        f"{_run_settings(first, trials)}", fontsize=9)
    return save(figure, path)


def along_training_plot(rows: Sequence[Row], path: str) -> str:
    """Fig. 6: sharpness against the exact training cross-entropy of the iterates kept along
    the SB and LB runs (both log axes; epochs annotated), one panel per sharpness setting."""
    if not rows:
        raise PlotError("no along-training rows to plot: run the experiment first")
    groups = _settings_groups(rows)
    figure, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.8),
                                layout="constrained", squeeze=False)
    for axis, group in zip(axes[0], groups, strict=True):
        for regime, color in (("SB", SB_COLOR), ("LB", LB_COLOR)):
            mine = sorted((row for row in group if row["regime"] == regime),
                          key=lambda row: int(row["epoch"]))
            if not mine:
                continue
            losses = [number(row["train_loss"]) for row in mine]
            values = [number(row["sharpness"]) for row in mine]
            axis.plot(losses, values, "-o", color=color, markersize=4,
                      label=f"{regime} (batch {mine[0]['batch_size']})")
            for row, x, y in zip(mine, losses, values, strict=True):
                axis.annotate(row["epoch"], (x, y), textcoords="offset points", xytext=(3, 3),
                              fontsize=7, color=color)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.invert_xaxis()  # Training moves right: the loss falls.
        readable_log_axis(axis)
        axis.set_xlabel("training cross-entropy (nats, exact, whole training set; log, "
                        "falling →)")
        axis.set_ylabel("sharpness (Metric 2.1, %)")
        axis.set_title(f"sharpness: {sharpness_text(group[0])}; labels: epoch", fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    first = rows[0]
    figure.suptitle(f"Fig. 6: sharpness along training, SB and LB from one x0 (seed "
                    f"{first['seed']})\n{_run_settings(first, 1)}", fontsize=9)
    return save(figure, path)
