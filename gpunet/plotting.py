"""Training curves as a PNG (matplotlib is an optional extra: ``pip install 'gpunet[plot]'``)."""

from __future__ import annotations


def plot_history(history, path, title: str | None = None) -> None:
    """Write ``path`` (PNG): one panel per quantity (loss, then each metric), training and validation curves.

    ``history`` is what ``fit`` returns (or its ``.history`` dict).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot_history needs matplotlib: pip install 'gpunet[plot]' (or pip install matplotlib)") \
            from None
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs.get("loss"):
        raise ValueError("plot_history needs a History from fit (with at least one epoch of 'loss')")
    names = [k for k in logs if not k.startswith("val_") and k != "lr"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    epochs = range(1, len(logs["loss"]) + 1)
    for ax, name in zip(axes[0], names):
        ax.plot(epochs, logs[name], label="training")
        if f"val_{name}" in logs:
            ax.plot(epochs, logs[f"val_{name}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
