"""The README.md model card of a transformers export, with Hugging Face metadata (YAML front matter)."""
import json
from pathlib import Path


def _front_matter(languages: list, scores: list, name: str) -> list:
    lines = ["---", "language:"] + [f"- {code}" for code in languages]
    lines += ["license: unknown  # set the licence of your model (Whisper and mBART-50 are MIT; check your data)",
              "library_name: transformers", "pipeline_tag: automatic-speech-recognition",
              "tags:", "- speech-translation", "- comsl", "- whisper", "- mbart-50"]
    if scores:
        lines += ["model-index:", f"- name: {name}", "  results:"]
        for s in scores:
            lines += ["  - task:", "      type: automatic-speech-recognition", "      name: Speech translation",
                      "    dataset:", f"      name: {s['subset']}", f"      type: {s['subset']}",
                      "    metrics:", "    - type: bleu", f"      value: {s['bleu']}",
                      f"      name: BLEU (beam {s['beam']}, {s['sentences']} sentences)",
                      f"      args: {json.dumps(s['signature'])}"]
    return lines + ["---", ""]


def hf_model_card(folder: Path, cfg, pairs: dict, scores: list, config) -> str:
    """Markdown card: metadata, usage with transformers alone, languages, scores, what is not carried."""
    src = sorted({p.split("-")[0] for p in pairs})
    tgt = sorted({p.split("-", 1)[1] for p in pairs})
    languages = sorted(set(src) | set(tgt)) or ["en"]
    example_src = src[0] if src else "fr"
    example_tgt = tgt[0] if tgt else "en"
    arch = (cfg.model.get("_name") if hasattr(cfg.model, "get") else None) or "whisper_mbart_composite"
    lines = _front_matter(languages, scores, folder.name)
    lines += [
        f"# ComSL speech translation model ({arch})",
        "",
        "Whisper audio encoder + convolutional adapter + mBART-50 (ComSL, Le et al., NeurIPS 2023), trained "
        "with comsl_fairseq and exported for Hugging Face transformers. The code is in this folder; "
        "load it with `trust_remote_code=True`.",
        "",
        "## Use",
        "",
        "```python",
        "import soundfile as sf",
        "from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor",
        "",
        f'model = AutoModelForSpeechSeq2Seq.from_pretrained("{folder.name}", trust_remote_code=True).eval()',
        f'processor = AutoProcessor.from_pretrained("{folder.name}", trust_remote_code=True)',
        'audio, rate = sf.read("clip.wav")  # 16 kHz mono',
        f'inputs = processor(audio, sampling_rate=16000, src_lang="{example_src}", return_tensors="pt")',
        f'ids = model.generate(**inputs, tgt_lang="{example_tgt}")  # beam 5 by default',
        "print(processor.batch_decode(ids)[0])",
        "```",
        "",
        "- `src_lang` (the spoken language) is required: its tag opens the encoder input. `tgt_lang` "
        "(or `forced_bos_token_id=` the tag's id) is the output language; for transcription (ASR) give "
        "the source language again.",
        "- Clips in a batch may differ in length: each is encoded at its own length with a padding mask, "
        "so the result does not depend on the batch. Clips longer than 30 s must be segmented first.",
        "- Decoding follows fairseq-generate's rules (the tag's own log-probability counts, every "
        "hypothesis ends with `</s>`), so `generate(num_beams=5)` returns fairseq's beam-5 hypotheses.",
        "",
        "## Languages",
        "",
    ]
    if pairs:
        lines += [f"Trained on: {', '.join(f'{p} ({n} rows)' for p, n in sorted(pairs.items()))}."]
    else:
        lines += ["Not recorded (the training manifests were not available at export time)."]
    codes = sorted(c for c in config.language_codes if "_" not in c)
    lines += ["", f"Codes the processor and `generate` accept: {' '.join(codes)} (and mBART-50 tags such as "
              "`fr_XX`).", "", "## Scores", ""]
    if scores:
        lines += ["| subset | beam | sentences | BLEU | sacreBLEU signature |", "|---|---|---|---|---|"]
        lines += [f"| {s['subset']} | {s['beam']} | {s['sentences']} | {s['bleu']} | "
                  f"`{s['signature'].replace('|', chr(92) + '|')}` |" for s in scores]
    else:
        lines.append("None given at export (pass a fairseq-generate log to the export).")
    lines += ["", "## Not in this folder", "",
              "The fairseq training state (optimizer, learning-rate schedule, criterion settings, data "
              "iterator) is not carried: training continues from the fairseq checkpoint with comsl_fairseq. "
              "The weights here can be fine-tuned in transformers (`labels` from the processor's `text=`), "
              "but without ComSL's multi-task criterion.", ""]
    return "\n".join(lines)
