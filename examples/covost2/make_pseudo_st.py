#!/usr/bin/env python3
"""Pseudo speech-translation data from Common Voice clips outside CoVoST 2.

Pseudo speech-translation data: Common Voice clips that are in no CoVoST 2 split, their
transcripts translated into English by the fine-tuned mBART (beam 5).

    python examples/covost2/make_pseudo_st.py --cv-root CV --covost-tsv-root TSV --out-root OUT \\
        --mt-checkpoint MT/checkpoint_best.pt [--pseudo-cv-root NEWER_CV] [--langs fr,de,...]

CoVoST 2 was cut from Common Voice 4, so the validated clips of CV 4 outside CoVoST are few;
like the original, the pool can come from a separate, newer Common Voice release
(--pseudo-cv-root; default: --cv-root). A clip is left out when its path is in any CoVoST 2
split, and also when its *sentence* (normalised: NFKC, case-folded, punctuation removed,
spaces collapsed) is that of any CoVoST 2 dev or test clip: newer releases hold new
recordings of the same sentences, which would otherwise leak test sentences into training.
The pool size, the path matches and the sentence leaks are logged per language.

OUT is the folder prep_covost2.py wrote: its config.yaml (or --config-yaml, the one the MT
stage trained with) gives the dictionary, the SentencePiece model and any trimmed vocabulary.
Writes OUT/pseudo_{lang}_en.tsv and decodes the clips into OUT/clips/{lang}/ like the prep
does; every dropped clip is named in OUT/pseudo_dropped.tsv and the counts are logged. Train
on them with TRAIN_SUBSET=train_..._en and PSEUDO_SUBSETS=pseudo_..._en (ablation row 8).
"""
import argparse
import logging
import sys
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from comsl_fairseq.data.manifest import write_manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep_covost2 import COVOST_X_EN, SAMPLE_RATE, clean_text, decode_clip, read_tsv  # noqa: E402

logger = logging.getLogger("make_pseudo_st")


class Translator:
    """Beam search with the fine-tuned mBART's text path, target tag forced, tags stripped."""

    def __init__(self, out_root: Path, checkpoint: Path, beam: int, device: torch.device,
                 config_yaml: str = "config.yaml"):
        from fairseq.sequence_generator import SequenceGenerator

        import comsl_fairseq  # noqa: F401  (checkpoint allowlist)
        from comsl_fairseq.data.config import DataConfig
        from comsl_fairseq.modules.mbart import load_mbart_text_model
        from comsl_fairseq.vocab.vocabulary import TextTokenizer, build_dictionary, language_tag_ids

        data_cfg = DataConfig.load(out_root / config_yaml)
        self.dictionary, n_pretrained = build_dictionary(data_cfg.vocab_filename, data_cfg.trim_vocab)
        self.tokenizer = TextTokenizer(data_cfg.sentencepiece_model, self.dictionary)
        self.model = load_mbart_text_model(checkpoint, self.dictionary, n_pretrained,
                                           data_cfg.vocab_filename).to(device).eval()
        self.tags = language_tag_ids(self.dictionary)
        self.generator = SequenceGenerator([self.model], self.dictionary, beam_size=beam, max_len_a=1.5,
                                           max_len_b=20, symbols_to_strip_from_output=self.tags)
        self.device = device

    @torch.no_grad()
    def __call__(self, texts: list, src_tag: str, tgt_tag: str = "en_XX") -> list:
        from fairseq.data import data_utils

        from comsl_fairseq.vocab.languages import tag_symbol

        d = self.dictionary
        src = [self.tokenizer.encode(t, src_tag)[:1024] for t in texts]
        sample = {"net_input": {"src_tokens": data_utils.collate_tokens(src, d.pad()).to(self.device),
                                "src_lengths": torch.tensor([len(s) for s in src], device=self.device)}}
        prefix = torch.full((len(texts), 1), d.index(tag_symbol(tgt_tag)), device=self.device)
        hyps = self.generator.generate([self.model], sample, prefix_tokens=prefix)
        return [self.tokenizer.decode([int(i) for i in h[0]["tokens"] if int(i) not in self.tags | {d.eos()}])
                for h in hyps]


def normalise_sentence(text: str) -> str:
    """The key that decides whether two transcripts are the same sentence."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


def covost_exclusions(cv_dir: Path, covost_tsv: Path, dropped: list, lang: str) -> tuple:
    """(paths of every CoVoST 2 clip, normalised sentences of its dev and test clips). The
    sentences come from the CoVoST release's own Common Voice (``cv_dir``/validated.tsv)."""
    covost = {r["path"]: r["split"] for r in read_tsv(covost_tsv, ["path", "split"], dropped, lang)}
    held_out = {p for p, split in covost.items() if split in ("dev", "test")}
    sentences = {normalise_sentence(r["sentence"])
                 for r in read_tsv(cv_dir / "validated.tsv", ["path", "sentence"], dropped, lang)
                 if r["path"] in held_out}
    sentences.discard("")
    return set(covost), sentences


def pseudo_candidates(pool_dir: Path, covost_paths: set, held_out_sentences: set, dropped: list,
                      lang: str) -> tuple:
    """Validated clips of ``pool_dir`` usable as pseudo-ST sources: [(path, text, speaker)]
    and the counts {pool, in_covost, leaked, empty} that were logged."""
    counts = {"pool": 0, "in_covost": 0, "leaked": 0, "empty": 0}
    candidates = []
    for r in read_tsv(pool_dir / "validated.tsv", ["path", "sentence"], dropped, lang):
        counts["pool"] += 1
        if r["path"] in covost_paths:
            counts["in_covost"] += 1
            continue
        text = clean_text(r["sentence"])
        if not text:
            counts["empty"] += 1
            dropped.append((lang, "pseudo", r["path"], "empty transcript"))
        elif normalise_sentence(text) in held_out_sentences:
            counts["leaked"] += 1
            dropped.append((lang, "pseudo", r["path"], "sentence of a CoVoST 2 dev/test clip"))
        else:
            candidates.append((r["path"], text, r.get("client_id", "")))
    logger.info("%s: pool %d validated clips in %s; %d in CoVoST 2 (by path), %d with a CoVoST 2 dev/test "
                "sentence (left out), %d empty; %d candidates", lang, counts["pool"], pool_dir, counts["in_covost"],
                counts["leaked"], counts["empty"], len(candidates))
    return candidates, counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cv-root", type=Path, required=True,
                   help="the Common Voice root CoVoST 2 was cut from (CV 4: {lang}/clips, validated.tsv)")
    p.add_argument("--pseudo-cv-root", type=Path, default=None,
                   help="Common Voice root to draw pseudo-ST clips from, e.g. a newer release (default: --cv-root)")
    p.add_argument("--covost-tsv-root", type=Path, required=True, help="folder with covost_v2.{lang}_en.tsv")
    p.add_argument("--out-root", type=Path, required=True, help="the folder prep_covost2.py wrote")
    p.add_argument("--mt-checkpoint", type=Path, required=True, help="fine-tuned mBART (finetune_mbart50.sh)")
    p.add_argument("--config-yaml", default="config.yaml",
                   help="data config the MT stage trained with, relative to --out-root (default config.yaml)")
    p.add_argument("--langs", default=",".join(COVOST_X_EN), help="source languages (default: all 21)")
    p.add_argument("--beam", type=int, default=5, help="beam size (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="transcripts translated together")
    p.add_argument("--max-seconds", type=float, default=30.0, help="drop longer clips")
    p.add_argument("--workers", type=int, default=4, help="parallel decoding processes")
    p.add_argument("--cpu", action="store_true", help="translate on the CPU even if a GPU is present")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(message)s")
    from comsl_fairseq.vocab.languages import mbart_tag

    out = args.out_root.resolve()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    translate = Translator(out, args.mt_checkpoint, args.beam, device, args.config_yaml)
    dropped = []
    pseudo_root = (args.pseudo_cv_root or args.cv_root).resolve()
    for lang in [x for x in args.langs.split(",") if x]:
        covost_paths, held_out = covost_exclusions(args.cv_root.resolve() / lang,
                                                   args.covost_tsv_root.resolve() / f"covost_v2.{lang}_en.tsv",
                                                   dropped, lang)
        cv_dir = pseudo_root / lang
        candidates, _ = pseudo_candidates(cv_dir, covost_paths, held_out, dropped, lang)
        jobs = [(str(cv_dir / "clips" / path), str(out / "clips" / lang / (Path(path).stem + ".flac")),
                 int(args.max_seconds * SAMPLE_RATE)) for path, _, _ in candidates]
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            decoded = dict((name, (n, reason)) for name, n, reason in
                           tqdm(pool.map(decode_clip, jobs, chunksize=32), total=len(jobs), desc=f"{lang} clips"))
        kept = []
        for path, text, speaker in candidates:
            n, reason = decoded[Path(path).name]
            if reason:
                dropped.append((lang, "pseudo", path, reason))
            else:
                kept.append((path, text, speaker, n))
        rows = []
        for start in tqdm(range(0, len(kept), args.batch_size), desc=f"{lang} translation"):
            chunk = kept[start:start + args.batch_size]
            for (path, text, speaker, n), translation in zip(chunk, translate([c[1] for c in chunk],
                                                                              mbart_tag(lang)), strict=True):
                if not translation.strip():
                    dropped.append((lang, "pseudo", path, "empty translation"))
                    continue
                rows.append([f"{lang}_{Path(path).stem}", f"{lang}/{Path(path).stem}.flac", str(n), text,
                             translation, lang, "en", speaker])
        write_manifest(out / f"pseudo_{lang}_en.tsv", rows)
        logger.info("%s: %d validated clips outside CoVoST 2, %d pseudo-ST rows written, %d dropped", lang,
                    len(candidates), len(rows), len(candidates) - len(rows))
    with open(out / "pseudo_dropped.tsv", "w", encoding="utf-8") as f:
        f.write("lang\tsplit\tpath\treason\n")
        for row in dropped:
            f.write("\t".join(row) + "\n")
    logger.info("dropped %d rows in all; details in %s", len(dropped), out / "pseudo_dropped.tsv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
