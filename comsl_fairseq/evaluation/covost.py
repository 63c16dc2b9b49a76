"""CoVoST 2 X->En scores per language from fairseq-generate logs, beside the paper's."""
import json
import re
from pathlib import Path

from comsl_fairseq.data.manifest import read_table
from comsl_fairseq.evaluation.logs import read_generate_log
from comsl_fairseq.evaluation.scoring import asr_scores, corpus_scores
from comsl_fairseq.vocab.languages import COVOST_X_EN, COVOST_X_EN_LANGS

GROUPS = {name: list(langs) for name, langs in COVOST_X_EN.items()}
ALL = list(COVOST_X_EN_LANGS)
# ComSL Large, CoVoST 2 test BLEU, as published (15 of 21 languages) and the averages.
PAPER_LARGE = {"fr": 38.8, "de": 36.0, "ca": 35.3, "es": 40.4, "ru": 49.2, "zh-CN": 21.4, "nl": 39.7, "tr": 33.6,
               "et": 19.2, "mn": 2.9, "ar": 41.4, "lv": 21.3, "sl": 31.6, "ja": 21.3, "id": 46.6}
# References of a log may still differ from its manifest's text in a few rows (normalisation by
# the tokenizer); more than this share means another test set.
MAX_DIFFERING_REFERENCES = 0.2
PAPER_AVERAGES = {"ComSL Medium": 29.7, "ComSL Large": 30.1, "ComSL Large + pseudo ST data": 31.5, "USM": 30.7}


# What fairseq writes for a piece outside the dictionary (``<unk>`` inside the SentencePiece
# detokenizer's marks) or SentencePiece for a character outside its model.
_UNKNOWN = re.compile(r"<<unk>>|<unk>|\u2047")


def _plain(text: str) -> str:
    return " ".join(text.split())


def same_reference(logged: str, manifest_text: str) -> bool:
    """Whether a fairseq-generate reference is the manifest's text: equal up to white space, where
    each unknown-piece mark of the log may stand for any characters of the manifest's text."""
    logged, manifest_text = _plain(logged), _plain(manifest_text)
    if logged == manifest_text:
        return True
    parts = _UNKNOWN.split(logged)
    if len(parts) == 1:
        return False
    pattern = ".*?".join(re.escape(part) for part in parts)
    return re.fullmatch(pattern, manifest_text, flags=re.S) is not None


def pairs(log: Path, manifest: Path, references: list) -> tuple:
    """(hypotheses, references) of ``log`` in manifest order, after checking that the log's
    references are the manifest's: a log of another test set (another language, another
    split) of the same size would otherwise be scored as this one."""
    hyps, refs = read_generate_log(log)
    n_expected = len(references)
    missing = sorted(set(range(n_expected)) - set(hyps))
    if missing or len(refs) != n_expected:
        raise ValueError(f"{log} has {len(hyps)} hypotheses and {len(refs)} references for the "
                         f"{n_expected} utterances of {manifest} (missing ids from {missing[:5]})")
    differ = [i for i in range(n_expected) if not same_reference(refs[i], references[i])]
    if len(differ) > MAX_DIFFERING_REFERENCES * n_expected:
        i = differ[0]
        raise ValueError(f"{log} was not decoded from {manifest}: {len(differ)} of its {n_expected} references "
                         f"differ from the manifest's tgt_text (row {i}: {refs[i][:60]!r} vs {references[i][:60]!r}); "
                         "score each log against the manifest it was decoded from")
    order = sorted(hyps)
    return [hyps[i] for i in order], [refs[i] for i in order]


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 2) if values else None


def score_covost(gen_dir: Path, data: Path, langs: list, out: Path) -> str:
    """Score each language's logs; write OUT.json and OUT.md; the Markdown table."""
    gen_dir, data = Path(gen_dir), Path(data)
    rows = {}
    signature = chrf_signature = None
    absent = [lang for lang in langs if not (data / f"test_{lang}_en.tsv").is_file()
              or not (gen_dir / f"generate-test_{lang}_en.txt").is_file()]
    if absent:
        found = [lang for lang in ALL if (gen_dir / f"generate-test_{lang}_en.txt").is_file()
                 and (data / f"test_{lang}_en.tsv").is_file()]
        raise ValueError(f"no {data}/test_LANG_en.tsv or {gen_dir}/generate-test_LANG_en.txt for "
                         f"{', '.join(absent)}; pass --langs with the languages decoded"
                         + (f" (both files are there for: {','.join(found)})" if found else
                            " (none of the 21 has both files there)"))
    for lang in langs:
        manifest = data / f"test_{lang}_en.tsv"
        references = [row.get("tgt_text") or "" for row in read_table(manifest)[1]]
        n = len(references)
        scores = corpus_scores(*pairs(gen_dir / f"generate-test_{lang}_en.txt", manifest, references))
        row = {"utterances": n, "bleu": scores["bleu"], "chrf": scores["chrf"], "paper_large": PAPER_LARGE.get(lang)}
        signature, chrf_signature = scores["bleu_signature"], scores["chrf_signature"]
        asr_log = gen_dir / "asr" / f"generate-test_{lang}_en.txt"
        if asr_log.is_file():
            transcripts = [r.get("src_text") or "" for r in read_table(manifest)[1]]
            row.update(asr_scores(*pairs(asr_log, manifest, transcripts), lang))  # asr_wer, or asr_cer for zh-CN / ja
        mt_log = gen_dir / "mt" / f"generate-test_{lang}_en.txt"
        if mt_log.is_file():
            mt = corpus_scores(*pairs(mt_log, manifest, references))
            row["mt_bleu"], row["mt_chrf"] = mt["bleu"], mt["chrf"]
        rows[lang] = row

    summary = {"average": mean(r["bleu"] for r in rows.values()),
               "chrf_average": mean(r["chrf"] for r in rows.values()), "languages": len(rows),
               "is_21_language_average": set(rows) == set(ALL)}
    for group, members in GROUPS.items():
        summary[f"{group}_average"] = mean(rows[x]["bleu"] for x in members if x in rows)
    result = {"per_language": rows, "summary": summary, "sacrebleu_signature": signature,
              "chrf_signature": chrf_signature, "asr_normalizer": "whisper BasicTextNormalizer",
              "paper_averages": PAPER_AVERAGES}
    Path(f"{out}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")

    extra = [k for k in ("asr_wer", "asr_cer", "mt_bleu", "mt_chrf") if any(k in r for r in rows.values())]
    lines = ["| language | group | utterances | BLEU (ours) | chrF (ours) | ComSL Large (paper) | "
             + " | ".join(extra) + " |", "|---" * (6 + len(extra)) + "|"]
    group_of = {x: g for g, members in GROUPS.items() for x in members}
    for lang, r in rows.items():
        paper = "" if r["paper_large"] is None else f"{r['paper_large']:.1f}"
        cells = [str(r.get(k, "")) for k in extra]
        lines.append(f"| {lang} | {group_of.get(lang, '')} | {r['utterances']} | {r['bleu']:.2f} | {r['chrf']:.2f} | "
                     f"{paper} | "
                     + " | ".join(cells) + " |")
    label = "21-language average" if summary["is_21_language_average"] else f"average of {len(rows)} languages"
    lines.append(f"| **{label}** | | | **{summary['average']:.2f}** | {summary['chrf_average']:.2f} | 30.1 (Large), "
                 "29.7 (Medium), 31.5 "
                 "(Large + pseudo) | " + " | ".join("" for _ in extra) + " |")
    for group in GROUPS:
        value = summary[f"{group}_average"]
        if value is not None:
            lines.append(f"| {group} resource average | | | {value:.2f} | | | " + " | ".join("" for _ in extra) + " |")
    lines.append("")
    lines.append(f"sacreBLEU signature: `{signature}`; chrF: `{chrf_signature}`")
    lines.append("ComSL Large (paper): Le et al., NeurIPS 2023 (arXiv 2305.14838), CoVoST 2 test BLEU as published "
                 "for 15 of 21 languages.")
    if any(k in extra for k in ("asr_wer", "asr_cer")):
        lines.append("ASR: WER (CER for zh-CN, ja) after Whisper's BasicTextNormalizer (lower case, no punctuation).")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return "\n".join(lines)
