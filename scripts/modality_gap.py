#!/usr/bin/env python3
"""Modality-gap report of one model: per language, BLEU of speech translation (ST), of MT on the
gold transcripts, and of the cascade ASR -> MT through the same model, with the gaps MT - ST and
cascade - ST and their 95 % paired-bootstrap intervals; plus an HTML page of every utterance
(audio player, transcript, ASR / MT / cascade / ST outputs, sentence scores, sortable by gap).

    python scripts/modality_gap.py --path CKPT --data DATA --subsets test_fr_en,test_de_en --out DIR \
        [--beam 5] [--batch-size 16] [--generate-args="--cpu --max-len-b 200"]

Decodes with fairseq-generate (``--decode-task st``, ``asr``, ``mt``), writes the ASR hypotheses
as the transcripts of a copy of each manifest (DIR/cascade_data/) and decodes that with
``--decode-task mt``. Writes DIR/modality_gap.{md,json,html}. Decoding already done in DIR is
reused (``--force`` decodes again). An utterance whose ASR output is empty gets an empty cascade
translation (counted and logged: the manifest reader refuses empty transcripts).

Also draws DIR/similarity.png, linked from the page: for one utterance (--similarity-utterance
SUBSET:INDEX, default the first of the first subset) the cosine similarity of every speech-only
encoder state with every transcript text-encoder state, for this model and, side by side, for
each --similarity-with checkpoint (e.g. the ST-only row 1 against the full model).
"""
import argparse
import html
import json
import logging
import shlex
import sys
from pathlib import Path

import yaml

from comsl_fairseq.data.config import DataConfig
from comsl_fairseq.decoded_system import manifest_column, read_log
from comsl_fairseq.gap_page import audio_files, render, summary_table
from comsl_fairseq.generate_log import read_generate_log
from comsl_fairseq.modality_gap import language_report, load_systems, markdown, utterances

logger = logging.getLogger("modality_gap")
USER_DIR = Path(__file__).resolve().parents[1] / "comsl_fairseq"


def generate(args, data: Path, subset: str, task: str, out: Path) -> Path:
    """fairseq-generate one subset with --decode-task TASK into OUT/generate-SUBSET.txt. Runs in this
    process (fairseq_cli.generate with the CLI's own parser): same output, no start-up per decode."""
    log = out / f"generate-{subset}.txt"
    if log.is_file() and not args.force:
        logger.info("reusing %s", log)
        return log
    from fairseq import options
    from fairseq_cli.generate import main as generate_main

    argv = [str(data), "--user-dir", str(USER_DIR), "--task", "comsl_speech_to_text",
            "--config-yaml", args.config_yaml, "--gen-subset", subset, "--path", str(args.path),
            "--beam", str(args.beam), "--prefix-size", "1", "--batch-size", str(args.batch_size),
            "--required-batch-size-multiple", "1", "--decode-task", task, "--results-path", str(out / "tmp"),
            *shlex.split(args.generate_args)]
    logger.info("decoding %s (%s): fairseq-generate %s", subset, task, " ".join(argv))
    parser = options.get_generation_parser()
    parser.add_argument("--arch", "-a", default="wav2vec2", help="as fairseq-generate's own parser")
    generate_main(options.parse_args_and_arch(parser, argv))
    (out / "tmp" / f"generate-{subset}.txt").replace(log)  # complete decodes only
    (out / "tmp").rmdir()
    return log


def cascade_data(args, subset: str, asr_log: Path, folder: Path) -> tuple:
    """Copy of the subset's manifest with ASR hypotheses as transcripts (rows with an empty one left
    out); returns (data folder, [original row index of each kept row], number left out)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = DataConfig.load(args.data / args.config_yaml)
    raw = yaml.safe_load((args.data / args.config_yaml).read_text(encoding="utf-8"))
    raw.update(vocab_filename=str(cfg.vocab_filename), audio_root=str(cfg.audio_root),
               bpe_tokenizer={"bpe": "sentencepiece", "sentencepiece_model": str(cfg.sentencepiece_model)})
    (folder / args.config_yaml).write_text(yaml.safe_dump(raw), encoding="utf-8")
    _, ids, hyps, _, _ = read_log(asr_log, args.data)
    lines = (args.data / f"{subset}.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    src = header.index("src_text")
    kept, rows, empty = [], [lines[0]], 0
    for i, hyp in zip(ids, hyps, strict=True):
        hyp = " ".join(hyp.split())  # no tab or newline can break the TSV
        if not hyp:
            empty += 1
            logger.warning("%s row %d: empty ASR output, cascade translation left empty", subset, i)
            continue
        fields = lines[1 + i].split("\t")
        fields[src] = hyp
        rows.append("\t".join(fields))
        kept.append(i)
    (folder / f"{subset}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder, kept, empty


def decode_cascade(args, subset: str, asr_log: Path, out: Path) -> None:
    """Cascade ASR -> MT; DIR/cascade/generate-SUBSET.txt numbered like the original manifest."""
    final = out / "cascade" / f"generate-{subset}.txt"
    if final.is_file() and not args.force:
        logger.info("reusing %s", final)
        return
    data, kept, empty = cascade_data(args, subset, asr_log, out / "cascade_data")
    raw_dir = out / "cascade_raw"
    hyps = {}
    if kept:
        hyps, _ = read_generate_log(generate(args, data, subset, "mt", raw_dir))
        if sorted(hyps) != list(range(len(kept))):
            raise SystemExit(f"error: cascade MT of {subset} decoded {len(hyps)} of {len(kept)} rows")
    refs = manifest_column(args.data / f"{subset}.tsv", "tgt_text")
    by_row = {orig: hyps[j] for j, orig in enumerate(kept)}
    lines = []
    for i, ref in enumerate(refs):
        lines += [f"T-{i}\t{ref.strip()}", f"D-{i}\t0.0\t{by_row.get(i, '')}"]
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("%s: cascade over %d rows (%d with empty ASR output)", subset, len(refs), empty)


def similarity_figure(args, subsets: list) -> dict:
    """DIR/similarity.png for the models of --similarity-with and this one; {"file", "caption"}."""
    from comsl_fairseq.evaluation.similarity import load_model, plot_similarity, similarity_matrix

    subset, index = subsets[0], 0
    if args.similarity_utterance:
        subset, _, number = args.similarity_utterance.rpartition(":")
        index = int(number)
    models = []
    for item in args.similarity_with:
        label, sep, path = item.rpartition("=")
        if not sep:
            raise SystemExit(f"error: --similarity-with {item!r}: write LABEL=CHECKPOINT")
        models.append((label, Path(path)))
    models.append((args.label or args.path.name, args.path))
    panels = []
    for label, path in models:
        model, task = load_model(path, args.data, args.config_yaml)
        panels.append((label, similarity_matrix(model, task, subset, index)))
    out = plot_similarity(panels, args.out / "similarity.png")
    caption = (f"Cosine similarity between the speech-only encoder states (rows: speech frames) and the "
               f"text-encoder states of the transcript (columns: tokens) of {subset} utterance {index} "
               f"({panels[0][1]['id']}), for " + ", ".join(label for label, _ in models) + ".")
    return {"file": out.name, "caption": caption}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", type=Path, required=True, help="trained comsl_fairseq checkpoint")
    p.add_argument("--data", type=Path, required=True, help="folder with SUBSET.tsv manifests and config.yaml")
    p.add_argument("--subsets", required=True, help="comma-separated test subsets, e.g. test_fr_en,test_de_en")
    p.add_argument("--out", type=Path, required=True, help="output folder (decodes, report, HTML page)")
    p.add_argument("--config-yaml", default="config.yaml", help="data config name inside --data")
    p.add_argument("--beam", type=int, default=5, help="beam size of every decode")
    p.add_argument("--batch-size", type=int, default=16, help="sentences per decoding batch")
    p.add_argument("--generate-args", default="",
                   help="more fairseq-generate flags, written with = (--generate-args='--cpu')")
    p.add_argument("--samples", type=int, default=1000, help="bootstrap resamples for the gap intervals")
    p.add_argument("--force", action="store_true", help="decode again even where DIR holds decodes")
    p.add_argument("--similarity-utterance", default=None,
                   help="SUBSET:INDEX of the utterance of the similarity figure (default: first of the first subset)")
    p.add_argument("--similarity-with", action="append", default=[], metavar="LABEL=CKPT",
                   help="another model drawn beside this one in the similarity figure (repeatable), e.g. "
                        "'row 1 (ST only)=exp/ablation/row1_st_only/checkpoint_last.pt'")
    p.add_argument("--label", default=None, help="this model's name in the similarity figure (default: --path)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("sacrebleu").setLevel(logging.WARNING)
    args.data, args.out = args.data.resolve(), args.out.resolve()
    subsets = [s for s in args.subsets.split(",") if s]
    for subset in subsets:
        if not (args.data / f"{subset}.tsv").is_file():
            raise SystemExit(f"error: --subsets names {subset}, but {args.data / subset}.tsv does not exist")
        for task in ("st", "asr", "mt"):
            generate(args, args.data, subset, task, args.out / task)
        decode_cascade(args, subset, args.out / "asr" / f"generate-{subset}.txt", args.out)

    systems = load_systems(args.out, args.data)
    rows = language_report(systems, args.samples)
    table = markdown(rows)
    (args.out / "modality_gap.md").write_text(table, encoding="utf-8")
    (args.out / "modality_gap.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    utts = utterances(systems)
    page = args.out / "modality_gap.html"
    figure = similarity_figure(args, subsets)
    summary = summary_table(rows) + (
        f'<h2>Speech-text similarity</h2><p>{html.escape(figure["caption"])}</p>'
        f'<p><a href="{figure["file"]}"><img src="{figure["file"]}" alt="similarity matrices" '
        'style="max-width:100%"></a></p>')
    render(utts, audio_files(args.data, subsets, args.out, args.config_yaml), page, summary,
           f"Modality gap of {args.path.name}")
    print(table)
    print(f"page: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
