"""Write the keep file of a trimmed vocabulary from the training manifests.

    comsl-trim-vocab DATA --splits train                         # writes DATA/vocab_keep.txt
    comsl-trim-vocab DATA --splits train --manifests MT/train.tsv  # also the MT stage's text

The kept pieces are those that SentencePiece (the data config's model) uses for every
transcript and translation of the named manifests, plus the single-character piece of every
character they contain; the language tags and specials are always kept. Then add
``trim_vocab: vocab_keep.txt`` to DATA/config.yaml: training, fairseq-generate, comsl-translate
and comsl-export all read it from there. Write the keep file once, before the first training
stage, and keep it: a model trained with one keep file loads only with that one.
"""
import argparse
import logging
from pathlib import Path

from comsl_fairseq.cli.command import argument_parser, command, output_arg, output_file


def build_parser() -> argparse.ArgumentParser:
    p = argument_parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data", type=Path, help="data folder with config.yaml and the manifests")
    p.add_argument("--config-yaml", default="config.yaml", help="data config, relative to the data folder")
    p.add_argument("--splits", nargs="+", default=["train"],
                   help="manifests of the data folder (names without .tsv) whose text is kept")
    p.add_argument("--manifests", nargs="*", type=Path, default=[],
                   help="more manifests (paths), e.g. the MT stage's training text")
    p.add_argument("--out", type=output_arg, default=None,
                   help="keep file to write (default DATA/vocab_keep.txt; a folder: FOLDER/vocab_keep.txt)")
    return p


@command
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    from comsl_fairseq.data.config import DataConfig
    from comsl_fairseq.data.manifest import SkipLog, read_manifest
    from comsl_fairseq.vocab.trim import always_kept_symbols, pieces_to_keep, write_keep_file
    from comsl_fairseq.vocab.vocabulary import build_dictionary, load_sentencepiece

    data_cfg = DataConfig.load(args.data / args.config_yaml)
    dictionary, _ = build_dictionary(data_cfg.vocab_filename)  # always the full one
    paths = [args.data / f"{split}.tsv" for split in args.splits] + list(args.manifests)
    texts = []
    for path in paths:
        skips = SkipLog(str(path))
        rows = read_manifest(path, skips)
        logging.getLogger(__name__).info(skips.summary(len(rows)))
        texts += [t for r in rows for t in (r.src_text, r.tgt_text)]
    if not texts:
        raise ValueError(f"no usable rows in {', '.join(map(str, paths))}: nothing to keep")
    pieces = pieces_to_keep(load_sentencepiece(data_cfg.sentencepiece_model), dictionary, texts)
    out = output_file(args.out, "vocab_keep.txt") if args.out else args.data / "vocab_keep.txt"
    write_keep_file(out, pieces)
    n_full = len(dictionary) - dictionary.nspecial - len(always_kept_symbols())
    rows = dictionary.nspecial + len(always_kept_symbols()) + len(pieces)
    print(f"{out}: {len(pieces)} of {n_full} pieces kept ({100 * len(pieces) / n_full:.1f} %) from "
          f"{len(texts)} texts: {rows} embedding rows instead of {len(dictionary)}; add 'trim_vocab: "
          f"{out.resolve()}' to {data_cfg.path} to train with them")
    return 0
