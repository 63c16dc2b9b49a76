#!/usr/bin/env python3
"""Pseudo speech-translation data: Common Voice clips that are in no CoVoST 2 split, their
transcripts translated into English by the fine-tuned mBART (beam 5).

    python examples/covost2/make_pseudo_st.py --cv-root CV --covost-tsv-root TSV --out-root OUT \\
        --mt-checkpoint MT/checkpoint_best.pt [--langs fr,de,...]

OUT is the folder prep_covost2.py wrote (its config.yaml gives the dictionary and the
SentencePiece model). Writes OUT/pseudo_{lang}_en.tsv and decodes the clips into
OUT/clips/{lang}/ like the prep does; every dropped clip is named in OUT/pseudo_dropped.tsv
and the counts are logged. Train on them with TRAIN_SUBSET=train_..._en and
PSEUDO_SUBSETS=pseudo_..._en (ablation row 8).
"""
import argparse
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep_covost2 import COVOST_X_EN, MANIFEST_COLUMNS, SAMPLE_RATE, clean_text, decode_clip, read_tsv  # noqa: E402

logger = logging.getLogger("make_pseudo_st")


class Translator:
    """Beam search with the fine-tuned mBART's text path, target tag forced, tags stripped."""

    def __init__(self, out_root: Path, checkpoint: Path, beam: int, device: torch.device):
        from fairseq.sequence_generator import SequenceGenerator

        import comsl_fairseq  # noqa: F401  (checkpoint allowlist)
        from comsl_fairseq.data.config import DataConfig
        from comsl_fairseq.data.vocabulary import TextTokenizer, build_dictionary, language_tag_ids
        from comsl_fairseq.modules.mbart import load_mbart_text_model

        data_cfg = DataConfig.load(out_root / "config.yaml")
        self.dictionary, n_pretrained = build_dictionary(data_cfg.vocab_filename)
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

        from comsl_fairseq.data.languages import tag_symbol

        d = self.dictionary
        src = [self.tokenizer.encode(t, src_tag)[:1024] for t in texts]
        sample = {"net_input": {"src_tokens": data_utils.collate_tokens(src, d.pad()).to(self.device),
                                "src_lengths": torch.tensor([len(s) for s in src], device=self.device)}}
        prefix = torch.full((len(texts), 1), d.index(tag_symbol(tgt_tag)), device=self.device)
        hyps = self.generator.generate([self.model], sample, prefix_tokens=prefix)
        return [self.tokenizer.decode([int(i) for i in h[0]["tokens"] if int(i) not in self.tags | {d.eos()}])
                for h in hyps]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cv-root", type=Path, required=True, help="Common Voice root ({lang}/clips, validated.tsv)")
    p.add_argument("--covost-tsv-root", type=Path, required=True, help="folder with covost_v2.{lang}_en.tsv")
    p.add_argument("--out-root", type=Path, required=True, help="the folder prep_covost2.py wrote")
    p.add_argument("--mt-checkpoint", type=Path, required=True, help="fine-tuned mBART (finetune_mbart50.sh)")
    p.add_argument("--langs", default=",".join(COVOST_X_EN), help="source languages (default: all 21)")
    p.add_argument("--beam", type=int, default=5, help="beam size (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="transcripts translated together")
    p.add_argument("--max-seconds", type=float, default=30.0, help="drop longer clips")
    p.add_argument("--workers", type=int, default=4, help="parallel decoding processes")
    p.add_argument("--cpu", action="store_true", help="translate on the CPU even if a GPU is present")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(message)s")
    from comsl_fairseq.data.languages import mbart_tag

    out = args.out_root.resolve()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    translate = Translator(out, args.mt_checkpoint, args.beam, device)
    dropped = []
    for lang in [x for x in args.langs.split(",") if x]:
        cv_dir = args.cv_root.resolve() / lang
        covost = {r["path"] for r in read_tsv(args.covost_tsv_root.resolve() / f"covost_v2.{lang}_en.tsv",
                                               ["path"], dropped, lang)}
        candidates = []
        for r in read_tsv(cv_dir / "validated.tsv", ["path", "sentence"], dropped, lang):
            if r["path"] in covost:
                continue
            text = clean_text(r["sentence"])
            if not text:
                dropped.append((lang, "pseudo", r["path"], "empty transcript"))
                continue
            candidates.append((r["path"], text, r.get("client_id", "")))
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
        with open(out / f"pseudo_{lang}_en.tsv", "w", encoding="utf-8") as f:
            f.write("\t".join(MANIFEST_COLUMNS) + "\n")
            for row in rows:
                f.write("\t".join(field.replace("\t", " ") for field in row) + "\n")
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
