"""The report's plots (matplotlib, PNG bytes by title): size vs robustness, accuracy vs ε (Zhou 2022
Fig. 6-10), accuracy vs weight bits with the critical attack strength (Gorsline 2021 Fig. 3), relative
accuracy vs the geometric lower bound (Fig. 4/7), σ_max(Q(W) − W) per layer (Song 2020 Fig. 3-4) and
the UAP transfer matrix — each when the report has the data it needs."""

from __future__ import annotations

import io
import math

import numpy as np

__all__ = ["figures"]


def figures(report) -> dict[str, bytes]:
    """PNG bytes of every plot the data allows, by title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}

    def png(fig) -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        return buffer.getvalue()

    if report.tradeoff:
        figures["Size vs robust accuracy"] = _tradeoff_figure(report, plt, png)

    fig, axes = plt.subplots(1, len(report.attacks), figsize=(4.2 * len(report.attacks), 3.4), squeeze=False)
    for ax, attack in zip(axes[0], report.attacks):
        for name, rows in report.accuracy.items():
            ax.plot(report.eps, [100 * v for v in rows[attack]], marker="o", label=name)
        ax.set(title=attack, xlabel="ε", ylabel="accuracy %", ylim=(0, 100))
    axes[0][0].legend(fontsize=7)
    figures["Accuracy vs ε (Zhou 2022, Fig. 6-10)"] = png(fig)

    names = report.bits_models()
    if len(names) >= 2:
        attack = report.critical["attack"] if report.critical else report.attacks[0]
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        criticals = [i for i, e in enumerate(report.eps) if report.critical is not None
                     and math.isclose(e, report.critical["eps"])]
        labelled = _legend_indices(len(report.eps), criticals)
        for i, e in enumerate(report.eps):
            critical = i in criticals
            label = f"ε = {e:g}" + (" (critical)" if critical else "") if i in labelled else None
            ax.plot([report.bits[n] for n in names], [100 * report.accuracy[n][attack][i] for n in names],
                    marker="o", linewidth=3 if critical else 1, label=label)
        ax.set(title=f"{attack}: accuracy vs weight bits", xlabel="weight bits", ylabel="accuracy %")
        ax.legend(fontsize=7)
        figures["Accuracy vs weight bits (Gorsline 2021, Fig. 3)"] = png(fig)
        figures["Relative accuracy vs the lower bound (Gorsline 2021, Fig. 4/7)"] = _bound_figure(
            report, plt, png, names, attack)
    if report.lipschitz:
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for name, rows in report.lipschitz.items():
            ax.plot(range(len(rows)), [r["sigma_max"] for r in rows], marker="s", label=name)
            ax.set_xticks(range(len(rows)), [r["layer"] for r in rows], rotation=45, fontsize=7)
        ax.axhline(1.0, color="grey", linestyle="--")
        ax.set(title=f"σ_max(Q_{report.lipschitz_bits}(W) − W) per layer", ylabel="σ_max")
        ax.legend(fontsize=7)
        figures["Lipschitz constant of the quantization error (Song 2020, Fig. 3-4)"] = png(fig)
    if report.transfer:
        matrix = 100 * np.asarray(report.transfer["accuracy"])
        labels = report.transfer["labels"]
        fig, ax = plt.subplots(figsize=(1.1 * len(labels) + 2, 1.0 * len(labels) + 1.5))
        image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=100)
        ax.set_xticks(range(len(labels)), labels, rotation=45)
        ax.set_yticks(range(len(labels)), labels)
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", color="white", fontsize=8)
        ax.set(xlabel="evaluated on", ylabel="UAP crafted on", title="accuracy % under transferred UAPs")
        fig.colorbar(image)
        figures["UAP transfer matrix"] = png(fig)
    return figures

def _tradeoff_figure(report, plt, png) -> bytes:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for point in report.tradeoff:
        robust = 100 * point["robust"]
        low, high = 100 * point.get("low", point["robust"]), 100 * point.get("high", point["robust"])
        chosen = point.get("chosen", False)
        # at 0 or 100 % a Wilson bound can sit a rounding error inside the point: no negative bar
        ax.errorbar(point["bytes"], robust, yerr=[[max(robust - low, 0.0)], [max(high - robust, 0.0)]],
                    fmt="*" if chosen else "o",
                    markersize=14 if chosen else 6, capsize=3, color="crimson" if chosen else "steelblue")
        ax.annotate(point["name"] + (" (chosen)" if chosen else ""), (point["bytes"], robust),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set(title="weights size vs robust accuracy (95% CI)", xlabel="weights, bytes at their bit width",
           ylabel="robust accuracy %")
    return png(fig)

def _bound_figure(report, plt, png, names, attack) -> bytes:
    from ..analysis.geometric import fit_geometric_bound, geometric_lower_bound

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    eps = np.asarray(report.eps)
    for name in names:
        values = np.asarray(report.accuracy[name][attack])
        relative = values / values[0] if values[0] > 0 else values
        line, = ax.plot(eps, relative, marker="o", label=f"{name} measured")
        fit = fit_geometric_bound(eps, relative, report.bits[name])
        fine = np.linspace(0, eps.max(), 200)
        ax.plot(fine, geometric_lower_bound(fine, fit.n, report.bits[name]), color=line.get_color(), linestyle="--",
                label=f"bound, fitted n = {fit.n:.3g}")
    ax.set(title="relative accuracy and the geometric bound (eq. 14)", xlabel="ε", ylabel="A_r", ylim=(0, 1.05))
    ax.legend(fontsize=6)
    return png(fig)



def _legend_indices(count: int, keep=(), most: int = 12) -> set[int]:
    """The curves named in a legend: all of ``count`` when they fit in ``most``, else about
    ``most`` evenly spaced ones (first and last included) and always those in ``keep``."""
    if count <= most:
        return set(range(count))
    return {int(round(i)) for i in np.linspace(0, count - 1, most)} | set(keep)
