"""Plots and tables of keras-kd's results (matplotlib, files only).

Nothing here prints: each function returns text or writes a file, and the
command line or the examples decide what to show.
"""

import math

METHOD_LABELS = {
    "scratch": "student alone (labels)",
    "soft_targets": "+ teacher's soft targets",
    "transfer_set": "+ unlabelled transfer set",
}
METHOD_COLOURS = {"scratch": "#c44e52", "soft_targets": "#4c72b0", "transfer_set": "#55a868"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def plot_label_budget(rows, teacher_accuracy, path, title):
    """Test accuracy against the number of labels, one line per method.

    Args:
        rows: Summary rows of `few_labels.summarise` (`method`, `labels`,
            `mean`, `std` in [0, 1]).
        teacher_accuracy: The teacher's test accuracy in [0, 1], drawn as a
            dashed line.
        path: The PNG file to write.
        title: The plot's title.
    """
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(6.4, 4.0))
    for method, label in METHOD_LABELS.items():
        points = sorted((r["labels"], r["mean"], r["std"]) for r in rows if r["method"] == method)
        if not points:
            continue
        labels, means, stds = zip(*points)
        axis.errorbar(
            labels, [100 * m for m in means], yerr=[100 * s for s in stds],
            marker="o", capsize=3, label=label, color=METHOD_COLOURS[method],
        )
    axis.axhline(100 * teacher_accuracy, linestyle="--", color="grey",
                 label=f"teacher ({100 * teacher_accuracy:.1f}%)")
    axis.set_xscale("log")
    budgets = sorted({r["labels"] for r in rows})
    axis.set_xticks(budgets, [f"{n:,}" for n in budgets])
    axis.minorticks_off()
    axis.set_xlabel("labelled training digits")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def label_budget_table(rows):
    """A Markdown table of `few_labels.summarise` rows, methods side by side.

    Args:
        rows: Summary rows.

    Returns:
        The table as text, one row per label budget: mean +- std in percent
        (just the mean for a single seed), and each method's gain over the
        student alone.
    """
    by_budget = {}
    for row in rows:
        by_budget.setdefault(row["labels"], {})[row["method"]] = row
    methods = [m for m in METHOD_LABELS if any(r["method"] == m for r in rows)]

    def cell(row):
        if row is None:
            return "-"
        if row["seeds"] > 1:
            return f"{100 * row['mean']:.2f} +- {100 * row['std']:.2f}"
        return f"{100 * row['mean']:.2f}"

    header = ["labels"] + [METHOD_LABELS[m] for m in methods]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for labels in sorted(by_budget):
        cells = [f"{labels:,}"]
        scratch = by_budget[labels].get("scratch")
        for method in methods:
            row = by_budget[labels].get(method)
            text = cell(row)
            if row is not None and scratch is not None and method != "scratch":
                text += f" ({100 * (row['mean'] - scratch['mean']):+.2f})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows, calibrated_temperature, path, title):
    """Test accuracy against temperature, one line per alpha.

    Args:
        rows: Rows of `sweep.summarise_cells` (`setting`, `alpha`,
            `temperature`, `test_accuracy_mean`, `test_accuracy_std`).
        calibrated_temperature: The teacher's calibrated T, drawn as a
            dotted line, or `None`.
        path: The PNG file to write.
        title: The plot's title.
    """
    pyplot = _pyplot()
    figure, axis = pyplot.subplots(figsize=(6, 4))
    distilled = [r for r in rows if r["setting"] == "distilled"]
    for alpha in sorted({r["alpha"] for r in distilled}):
        points = sorted((r for r in distilled if r["alpha"] == alpha), key=lambda r: r["temperature"])
        axis.errorbar(
            [p["temperature"] for p in points],
            [100 * p["test_accuracy_mean"] for p in points],
            yerr=[100 * p["test_accuracy_std"] for p in points],
            marker="o", capsize=3, label=f"distilled, alpha {alpha}",
        )
    for r in rows:
        if r["setting"] == "scratch":
            axis.axhline(100 * r["test_accuracy_mean"], color="grey", linestyle="--",
                         label="student from scratch")
    if calibrated_temperature is not None:
        axis.axvline(calibrated_temperature, color="#c44e52", linestyle=":", label="calibrated T")
    axis.set_xscale("log")
    axis.set_xlabel("temperature T")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def paired_gain_verdict(name, gains, baseline="scratch", unit="bits/char",
                        standard_errors=2.0):
    """A one-line verdict on a method's per-seed gains over a baseline.

    The gains are paired by seed (same initial weights and batches), so
    their spread is the seed-to-seed noise of the comparison. One seed
    cannot tell a gain from that noise; with two or more, the method helps
    only when the mean gain exceeds `standard_errors` standard errors of the
    mean (std with ddof=1 over sqrt(n)), and hurts only when it is below
    minus as many. A rough rule: with 2 or 3 seeds, 2 standard errors is a
    weaker test than a 95% Student-t interval.

    Args:
        name: The method, the line's first word(s).
        gains: The per-seed gains over the baseline (positive is better).
        baseline: What the gains are measured against, for the text.
        unit: The gains' unit, for the text.
        standard_errors: How many standard errors the mean gain must clear.

    Returns:
        The verdict as text: "`name`: helps (...)", "hurts", "no clear
        difference" or "cannot tell (1 seed)".

    Raises:
        ValueError: If `gains` is empty or not finite.

    Example:

    >>> paired_gain_verdict("forward KL", [0.005])
    'forward KL: cannot tell (1 seed): +0.005 bits/char vs scratch.'
    """
    gains = [float(g) for g in gains]
    if not gains or not all(math.isfinite(g) for g in gains):
        raise ValueError(
            "`gains` must hold one finite gain per seed. Received: "
            f"gains={gains!r}. Pass the per-seed differences baseline - method."
        )
    n = len(gains)
    mean = sum(gains) / n
    if n < 2:
        return f"{name}: cannot tell (1 seed): {mean:+.3f} {unit} vs {baseline}."
    std = math.sqrt(sum((g - mean) ** 2 for g in gains) / (n - 1))
    error = std / math.sqrt(n)
    figures = (f"{mean:+.3f} +- {error:.3f} {unit} vs {baseline} "
               f"(mean +- standard error, {n} seeds)")
    if mean > standard_errors * error:
        return f"{name}: helps, {figures}."
    if mean < -standard_errors * error:
        return f"{name}: hurts, {figures}."
    return (f"{name}: no clear difference, {figures}: within "
            f"{standard_errors:g} standard errors of 0.")
