"""Training curves from fairseq-train logs: per-term losses, validation BLEU, learning rate, gradient norm."""
import math
from pathlib import Path

TRAIN_TAGS = ("train_inner",)
EPOCH_TRAIN = "train"


def label_of(path: Path) -> str:
    path = Path(path)
    return path.parent.name if path.is_file() else path.name


def panels(runs: dict, with_acc: bool) -> list:
    """Panel keys in a stable order: total loss, each term's loss (and accuracy), BLEU, lr, gnorm."""
    keys = set()
    for records in runs.values():
        for r in records:
            keys.update(r.values)
    terms = sorted(k for k in keys if k.endswith("_loss") and not k.startswith("best_"))
    out = (["loss"] if "loss" in keys else []) + terms
    if with_acc:
        out += sorted(k for k in keys if k.endswith("_acc"))
    return out + [k for k in ("bleu", "lr", "gnorm") if k in keys]


def series(records: list, key: str, train: bool) -> tuple:
    points = sorted((r.update, r.values[key]) for r in records
                    if key in r.values and ((r.tag in TRAIN_TAGS) == train) and r.tag != EPOCH_TRAIN)
    return [p[0] for p in points], [p[1] for p in points]


def plot(runs: dict, out: Path, with_acc: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    keys = panels(runs, with_acc)
    if not keys:
        raise ValueError("no curves found: are these fairseq-train logs (--log-format json or simple)?")
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, keys, strict=False):
        for i, (name, records) in enumerate(runs.items()):
            color = colors[i % len(colors)]
            if key != "bleu":  # training BLEU is not measured (fairseq logs it as 0)
                x, y = series(records, key, train=True)
                if x:
                    ax.plot(x, y, color=color, lw=1, label=f"{name} train")
            x, y = series(records, key, train=False)
            if x:
                ax.plot(x, y, color=color, ls="--", marker="o", ms=3, label=f"{name} valid")
        ax.set_title("validation BLEU" if key == "bleu" else key)
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3), useOffset=False)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:  # one legend for the figure, from the panel with the most entries
        h, lab = ax.get_legend_handles_labels()
        if len(h) > len(handles):
            handles, labels = h, lab
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
