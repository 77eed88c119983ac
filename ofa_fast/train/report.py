"""What a training run leaves for its user besides the checkpoint: the metrics JSONL
file, the plot of subnet accuracy against MACs, and the summary table."""
from __future__ import annotations

import json
import os

__all__ = ["MetricsLog", "plot_accuracy_vs_macs", "summary_table"]


class MetricsLog:
    """Appends one JSON object per line to path (rank 0 only: others pass path=None).
    offset() is the file size after the last line: a checkpoint stores it, and a resumed
    run truncates the file there, so lines written after the checkpoint by the stopped
    run are not kept twice."""

    def __init__(self, path, truncate_at=None):
        self.path = path
        if path is None:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if truncate_at is None:
            open(path, "w").close()
        else:
            with open(path, "a+b") as f:
                f.truncate(truncate_at)

    def write(self, **record):
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")

    def offset(self):
        return os.path.getsize(self.path) if self.path and os.path.exists(self.path) else 0


def plot_accuracy_vs_macs(rows, path, title):
    """A PNG scatter of top-1 against MMACs, one point per validated subnet, labelled.
    rows: dicts with "name", "macs", "top1"."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    xs = [r["macs"] / 1e6 for r in rows]
    ys = [r["top1"] for r in rows]
    ax.scatter(xs, ys, s=36, color="tab:blue", zorder=3)
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("MMACs per image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def summary_table(rows):
    """A text table of the validated subnets: name, MMACs, parameters, top-1, arch."""
    header = f"{'subnet':<10}{'MMACs':>9}{'params (M)':>12}{'top-1 %':>9}  arch"
    lines = [header, "-" * len(header)]
    for r in rows:
        arch = " ".join(f"{k}={_compact(v)}" for k, v in r["arch"].items())
        lines.append(f"{r['name']:<10}{r['macs'] / 1e6:>9.2f}{r['params'] / 1e6:>12.3f}"
                     f"{r['top1']:>9.2f}  {arch}")
    return "\n".join(lines)


def _compact(values):
    """[3, 3, 5, ...] -> '3,3,5,...' (one entry per block or stage)."""
    return ",".join(f"{v:g}" for v in values)
