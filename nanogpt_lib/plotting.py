"""Loss curves of a corpus run as a PNG: training loss per step, train and val evaluations."""

from __future__ import annotations

from pathlib import Path

from .atomic import atomic_path
from .training import History


def plot_losses(history: History, path: str | Path) -> Path:
    """Write the curves to `path` (PNG). Uses matplotlib's Figure directly: no pyplot state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot(history.epoch, history.loss, lw=0.8, alpha=0.5, label="train (per step, dropout on)")
    steps = [e["step"] for e in history.evals]
    ax.plot(steps, [e["train_loss"] for e in history.evals], "o-", label="train (eval)")
    ax.plot(steps, [e["val_loss"] for e in history.evals], "s-", label="validation (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path
