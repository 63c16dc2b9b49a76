"""The README.md model card of an exported model folder, generated from model_info.json."""
from pathlib import Path

from comsl_fairseq.inference.languages import split_pair


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.1f} kB"


def _table(header: tuple, rows: list) -> list:
    """A Markdown table; ``|`` inside a cell (sacreBLEU signatures) is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def model_card(info: dict, folder: Path, name: str | None = None) -> str:
    """Markdown: what the model is, how to use it, its shape, training, scores, files.
    ``folder``: where the files are now; ``name``: the folder's final name (default its own)."""
    name = name or folder.name
    pairs = info["training_data"]["pairs"]
    src = sorted({split_pair(p)[0] for p in pairs})
    tgt = sorted({split_pair(p)[1] for p in pairs})
    example_lang = src[0] if src else "fr"
    lines = [
        f"# ComSL speech translation model ({info['arch']})",
        "",
        "Whisper audio encoder + convolutional adapter + mBART-50, trained with "
        "comsl_fairseq (ComSL, Le et al., NeurIPS 2023). "
        f"Exported from `{info['source_checkpoint']}`; weights stored as {info['dtype']}.",
        "",
        "## Use",
        "",
        "```python",
        "from comsl_fairseq import SpeechTranslator",
        f't = SpeechTranslator.from_pretrained("{name}", device="cpu")',
        f'print(t.translate("clip.wav", src_lang="{example_lang}").text)',
        "```",
        "",
        "```",
        f"comsl-translate --path {name} recordings/ --src-lang {example_lang} --format srt --out subs/",
        "```",
        "",
        f"Clips up to {info['max_audio_seconds']:g} s are decoded whole; longer recordings are cut into "
        "speech segments (Silero VAD) and returned with timestamps. `--task asr` transcribes.",
        "",
        "## Architecture",
        "",
    ]
    params = info["parameters"]
    lines += _table(("part", "parameters"), [(k, _millions(v)) for k, v in params.items() if k != "total"]
                    + [("**total**", f"**{_millions(params['total'])}**")])
    lines += ["", "Dimensions (saved in the checkpoint's cfg): "
              + ", ".join(f"`{k}={v}`" for k, v in info["dims"].items() if v is not None) + ".",
              f"Whisper input padding: `--whisper-pad-seconds {info['whisper_pad_seconds']}`.", "",
              "## Training", ""]
    td = info["training_data"]
    lines += [f"- data folder `{td['folder']}`, subsets `{td['train_subset']}`",
              f"- {info['num_updates']} updates, epoch {info['epoch']}",
              "- criterion `comsl_multitask`: "
              + (", ".join(f"{k}={v}" for k, v in info["criterion"].items()) or "not recorded")]
    val = info["validation"]
    if val["value"] is not None:
        lines.append(f"- validation {val['metric']} of this checkpoint: {val['value']} (best: {val['best']})")
    lines += ["", "## Languages", ""]
    if pairs:
        lines += [f"Sources: {' '.join(src)}; targets: {' '.join(tgt)}.", ""]
        lines += _table(("pair", "training rows"), sorted(pairs.items()))
    else:
        lines.append("Not recorded (the training manifests were not available at export time); "
                     "`comsl-translate` warns that it cannot refuse untrained languages.")
    lines += ["", "## Scores", ""]
    if info["scores"]:
        lines += _table(("subset", "beam", "sentences", "BLEU", "sacreBLEU signature"),
                        [(s["subset"], s["beam"], s["sentences"], s["bleu"], f"`{s['signature']}`")
                         for s in info["scores"]])
    else:
        lines.append("None given at export (`comsl-export ... --score-log generate-test.txt`).")
    lines += ["", "## Files", ""]
    lines += _table(("file", "size"), [(p.name, _size(p.stat().st_size))
                                       for p in sorted(folder.iterdir()) if p.is_file() and p.name != "README.md"])
    return "\n".join(lines) + "\n"
