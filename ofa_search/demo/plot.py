"""The demo's picture: a device's Pareto front with the answers to queries marked."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ofa_search.atomic import atomic_write_bytes
from ofa_search.extras import require
from ofa_search.search.front import Front
from ofa_search.search.query import QueryResult


def plot_front(front: Front, answers: Sequence[tuple[float, QueryResult]],
               path: str | os.PathLike[str], *, title: str = "",
               others: Sequence[tuple[str, QueryResult]] = ()) -> Path:
    """Write a PNG of predicted accuracy vs predicted latency along ``front``, with each
    ``(budget_ms, answer)`` drawn as a vertical budget line and a marked point, and each
    ``(label, priced arch)`` of ``others`` as a marked point with its label (a
    :class:`~ofa_search.extras.MissingExtraError` without the ``plot`` extra)."""
    matplotlib = require("matplotlib", "plot", "the front plot")
    matplotlib.use("Agg")  # no display; must precede pyplot's import
    import matplotlib.pyplot as plt  # deferred: the plot extra; pyplot after the backend is chosen

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    xs = [p.predicted_latency_ms for p in front.points]
    ys = [100 * p.predicted_accuracy for p in front.points]
    ax.step(xs, ys, where="post", color="0.4", linewidth=1, label="Pareto front (predicted)")
    ax.scatter(xs, ys, s=8, color="0.4")
    colors = ("tab:red", "tab:orange", "tab:green", "tab:blue")
    for i, (budget, answer) in enumerate(answers):
        color = colors[i % len(colors)]
        ax.axvline(budget, color=color, linestyle=":", linewidth=1)
        ax.scatter([answer.predicted_latency_ms], [100 * answer.predicted_accuracy], s=60,
                   color=color, edgecolor="black", zorder=3,
                   label=f"budget {budget:.3f} ms")
    for label, other in others:
        ax.scatter([other.predicted_latency_ms], [100 * other.predicted_accuracy], s=60,
                   marker="D", color="tab:purple", edgecolor="black", zorder=3, label=label)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("predicted accuracy (%)")
    ax.set_title(title or f"{front.meta.get('device', '')} front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_png(fig, path)


def save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write matplotlib figure ``fig`` (laid out tightly) as a PNG, atomically, and close
    it."""
    import matplotlib.pyplot as plt  # deferred: matplotlib is the plot extra

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
