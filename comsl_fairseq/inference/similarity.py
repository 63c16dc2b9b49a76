"""The speech-text similarity matrix of one utterance (the paper's figure of the modality gap):
cosine similarity between every speech-only mBART-encoder state H_s (one per speech frame, the
source-language tag frame left out) and every text-encoder state H_x of the transcript (one
per transcript token, tag and </s> left out). A model whose speech and text representations
meet shows a bright, roughly monotonic path; one whose modalities stay apart shows low values
everywhere.
"""
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def load_model(path, data: Path, config_yaml: str = "config.yaml"):
    """(model in eval mode, task) from a trained checkpoint, reading data from ``data``."""
    from fairseq import checkpoint_utils

    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(path)], arg_overrides={"data": str(data), "config_yaml": config_yaml})
    return models[0].eval(), task


@torch.no_grad()
def similarity_matrix(model, task, subset: str, index: int) -> dict:
    """{"matrix": speech frames x transcript tokens (cosine), "tokens": the tokens' pieces,
    "id": the utterance id, "transcript": its text} for row ``index`` of ``subset``."""
    if subset not in task.datasets:
        task.load_dataset(subset)
    ds = task.dataset(subset)
    batch = ds.collater([ds[index]])
    net = batch["net_input"]
    speech = model.encoder(net["src_tokens"], net["src_lengths"], net["src_lang_tags"])
    h_s = speech["encoder_out"][0][1:, 0]  # T_s x C, the tag frame left out
    h_s = h_s[~speech["encoder_padding_mask"][0][0, 1:]]
    text_tokens = net["src_text_tokens"]
    h_x = model.encoder.forward_text(text_tokens)["encoder_out"][0][:, 0]  # T_x x C: [tag] x </s>
    pieces = [task.target_dictionary[int(t)] for t in text_tokens[0]]
    keep = [i for i, t in enumerate(text_tokens[0].tolist())
            if t not in task.tag_ids and t not in (task.target_dictionary.eos(), task.target_dictionary.pad())]
    h_x = h_x[keep]
    s = torch.nn.functional.normalize(h_s.float(), dim=-1) @ torch.nn.functional.normalize(h_x.float(), dim=-1).T
    return {"matrix": s, "tokens": [pieces[i] for i in keep], "id": ds.rows[index].id,
            "transcript": ds.rows[index].src_text}


def plot_similarity(panels: list, path: Path) -> Path:
    """One heat map per (label, similarity_matrix result), side by side, on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmin = min(float(p["matrix"].min()) for _, p in panels)
    vmax = max(float(p["matrix"].max()) for _, p in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1, 4.2), squeeze=False)
    for i, (ax, (label, p)) in enumerate(zip(axes[0], panels, strict=True)):
        im = ax.imshow(p["matrix"].numpy(), aspect="auto", origin="lower", vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(len(p["tokens"])))
        ax.set_xticklabels(p["tokens"], rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("transcript tokens (text encoder H_x)")
        ax.yaxis.get_major_locator().set_params(integer=True)
        if i == 0:
            ax.set_ylabel("speech frames (speech encoder H_s)")
        ax.set_title(f"{label}\nmean {float(p['matrix'].mean()):.2f}, max {float(p['matrix'].max()):.2f}",
                     fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="cosine similarity")
    first = panels[0][1]
    fig.suptitle(f"{first['id']}: {first['transcript']}", fontsize=9, y=1.04)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    logger.info("wrote %s", path)
    return path
