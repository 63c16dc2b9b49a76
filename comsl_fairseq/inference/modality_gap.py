"""Decoding for the modality-gap report: ST, ASR, MT and the ASR -> MT cascade of one model, with fairseq-generate."""
import html
import json
import logging
import shlex
from pathlib import Path

import yaml

from comsl_fairseq.data.config import DataConfig
from comsl_fairseq.data.manifest import read_table, write_manifest
from comsl_fairseq.evaluation.decoded_system import manifest_column, read_log
from comsl_fairseq.evaluation.gap_page import audio_files, render, summary_table
from comsl_fairseq.evaluation.logs import read_generate_log, write_generate_log
from comsl_fairseq.evaluation.modality_gap import language_report, load_systems, markdown, utterances

logger = logging.getLogger(__name__)


def generate(args, data: Path, subset: str, task: str, out: Path) -> Path:
    """fairseq-generate one subset with --decode-task TASK into OUT/generate-SUBSET.txt. Runs in this
    process (fairseq_cli.generate with the CLI's own parser): same output, no start-up per decode."""
    log = out / f"generate-{subset}.txt"
    if log.is_file() and not args.force:
        logger.info("reusing %s", log)
        return log
    from fairseq import options
    from fairseq_cli.generate import main as generate_main

    from comsl_fairseq.training.fairseq_setup import USER_DIR

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
    if cfg.trim_vocab is not None:  # a relative keep file would point into the copy's folder
        raw["trim_vocab"] = str(cfg.trim_vocab)
    (folder / args.config_yaml).write_text(yaml.safe_dump(raw), encoding="utf-8")
    _, ids, hyps, _, _ = read_log(asr_log, args.data)
    header, table = read_table(args.data / f"{subset}.tsv")
    kept, rows, empty = [], [], 0
    for i, hyp in zip(ids, hyps, strict=True):
        hyp = " ".join(hyp.split())
        if not hyp:
            empty += 1
            logger.warning("%s row %d: empty ASR output, cascade translation left empty", subset, i)
            continue
        rows.append([hyp if name == "src_text" else table[i][name] for name in header])
        kept.append(i)
    write_manifest(folder / f"{subset}.tsv", rows, columns=header)
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
    write_generate_log(final, [ref.strip() for ref in refs], [by_row.get(i, "") for i in range(len(refs))])
    logger.info("%s: cascade over %d rows (%d with empty ASR output)", subset, len(refs), empty)


def similarity_figure(args, subsets: list) -> dict:
    """DIR/similarity.png for the models of --similarity-with and this one; {"file", "caption"}."""
    from comsl_fairseq.inference.similarity import load_model, plot_similarity, similarity_matrix

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


def run(args) -> str:
    """Decode every subset (reusing decodes already in ``args.out``), write the report and the
    page; the Markdown table. ``args``: the ``comsl-modality-gap`` options."""
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
    return table
