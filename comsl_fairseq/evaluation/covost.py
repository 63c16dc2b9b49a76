"""CoVoST 2 scores per language from fairseq-generate logs: X->En beside the paper's, and En->X."""
import json
import re
from pathlib import Path

from comsl_fairseq.data.manifest import read_table
from comsl_fairseq.evaluation.logs import read_generate_log
from comsl_fairseq.evaluation.scoring import asr_scores, corpus_scores
from comsl_fairseq.vocab.languages import COVOST_EN_X_LANGS, COVOST_X_EN, COVOST_X_EN_LANGS

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


DIRECTIONS = ("x-en", "en-x")  # x-en: a language is a source into English; en-x: English's target


def test_set(lang: str, direction: str = "x-en") -> str:
    """The test manifest's name (without .tsv) of a language: ``test_fr_en`` or ``test_en_de``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    return f"test_{lang}_en" if direction == "x-en" else f"test_en_{lang}"


def score_language(gen_dir: Path, data: Path, lang: str, direction: str) -> tuple:
    """(row, BLEU signature, chrF signature) of one language's logs; BLEU is tokenized for the
    target language (zh, ja-mecab, 13a); ASR transcribes the source."""
    name = test_set(lang, direction)
    src, tgt = (lang, "en") if direction == "x-en" else ("en", lang)
    manifest = data / f"{name}.tsv"
    table = read_table(manifest)[1]
    references = [row.get("tgt_text") or "" for row in table]
    scores = corpus_scores(*pairs(gen_dir / f"generate-{name}.txt", manifest, references), lang=tgt)
    row = {"utterances": len(references), "bleu": scores["bleu"], "chrf": scores["chrf"],
           "bleu_tokenize": scores["bleu_signature"].split("tok:")[1].split("|")[0]}
    if direction == "x-en":
        row["paper_large"] = PAPER_LARGE.get(lang)
    asr_log = gen_dir / "asr" / f"generate-{name}.txt"
    if asr_log.is_file():
        transcripts = [r.get("src_text") or "" for r in table]
        row.update(asr_scores(*pairs(asr_log, manifest, transcripts), src))  # asr_wer, or asr_cer for zh-CN / ja
    mt_log = gen_dir / "mt" / f"generate-{name}.txt"
    if mt_log.is_file():
        mt = corpus_scores(*pairs(mt_log, manifest, references), lang=tgt)
        row["mt_bleu"], row["mt_chrf"] = mt["bleu"], mt["chrf"]
    return row, scores["bleu_signature"], scores["chrf_signature"]


def score_covost(gen_dir: Path, data: Path, langs: list, out: Path, direction: str = "x-en") -> str:
    """Score each language's logs; write OUT.json and OUT.md; the Markdown table. ``direction``:
    x-en (``langs`` are sources, test_{lang}_en) or en-x (``langs`` are targets, test_en_{lang})."""
    gen_dir, data = Path(gen_dir), Path(data)
    known = ALL if direction == "x-en" else list(COVOST_EN_X_LANGS)

    def decoded(lang: str) -> bool:
        name = test_set(lang, direction)
        return (data / f"{name}.tsv").is_file() and (gen_dir / f"generate-{name}.txt").is_file()

    absent = [lang for lang in langs if not decoded(lang)]
    if absent:
        both = [lang for lang in known if decoded(lang)]
        pattern = test_set("LANG", direction)
        raise ValueError(f"no {data}/{pattern}.tsv or {gen_dir}/generate-{pattern}.txt for "
                         f"{', '.join(absent)}; pass --langs with the languages decoded"
                         + (f" (both files are there for: {','.join(both)})" if both else
                            f" (none of the {len(known)} has both files there)"))
    rows = {}
    signature = chrf_signature = None
    signatures = {}
    for lang in langs:
        rows[lang], signature, chrf_signature = score_language(gen_dir, data, lang, direction)
        signatures[rows[lang]["bleu_tokenize"]] = signature
    summary = {"direction": direction, "average": mean(r["bleu"] for r in rows.values()),
               "chrf_average": mean(r["chrf"] for r in rows.values()), "languages": len(rows)}
    if direction == "x-en":
        summary["is_21_language_average"] = set(rows) == set(ALL)
        for group, members in GROUPS.items():
            summary[f"{group}_average"] = mean(rows[x]["bleu"] for x in members if x in rows)
    else:
        summary["is_15_language_average"] = set(rows) == set(COVOST_EN_X_LANGS)
    result = {"per_language": rows, "summary": summary, "sacrebleu_signature": signature,
              "sacrebleu_signatures": signatures, "chrf_signature": chrf_signature,
              "asr_normalizer": "whisper BasicTextNormalizer"}
    if direction == "x-en":
        result["paper_averages"] = PAPER_AVERAGES
    Path(f"{out}.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    lines = markdown_table(rows, summary, direction) + [""]
    lines += [f"sacreBLEU signature: `{sig}`" for sig in signatures.values()] + [f"chrF: `{chrf_signature}`"]
    if direction == "x-en":
        lines.append("ComSL Large (paper): Le et al., NeurIPS 2023 (arXiv 2305.14838), CoVoST 2 test BLEU as "
                     "published for 15 of 21 languages.")
    else:
        lines.append("BLEU tokenized per target language: zh for Chinese, ja-mecab for Japanese, 13a otherwise.")
    if any(k in r for r in rows.values() for k in ("asr_wer", "asr_cer")):
        lines.append("ASR: WER (CER for zh-CN, ja) after Whisper's BasicTextNormalizer (lower case, no punctuation).")
    Path(f"{out}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return "\n".join(lines)


def markdown_table(rows: dict, summary: dict, direction: str) -> list:
    """The per-language table's lines, the averages last."""
    extra = [k for k in ("asr_wer", "asr_cer", "mt_bleu", "mt_chrf") if any(k in r for r in rows.values())]
    pad = " | ".join("" for _ in extra)
    if direction == "x-en":
        lines = ["| language | group | utterances | BLEU (ours) | chrF (ours) | ComSL Large (paper) | "
                 + " | ".join(extra) + " |", "|---" * (6 + len(extra)) + "|"]
        group_of = {x: g for g, members in GROUPS.items() for x in members}
        for lang, r in rows.items():
            paper = "" if r["paper_large"] is None else f"{r['paper_large']:.1f}"
            lines.append(f"| {lang} | {group_of.get(lang, '')} | {r['utterances']} | {r['bleu']:.2f} | "
                         f"{r['chrf']:.2f} | {paper} | " + " | ".join(str(r.get(k, "")) for k in extra) + " |")
        label = "21-language average" if summary["is_21_language_average"] else f"average of {len(rows)} languages"
        lines.append(f"| **{label}** | | | **{summary['average']:.2f}** | {summary['chrf_average']:.2f} | "
                     "30.1 (Large), 29.7 (Medium), 31.5 (Large + pseudo) | " + pad + " |")
        for group in GROUPS:
            value = summary[f"{group}_average"]
            if value is not None:
                lines.append(f"| {group} resource average | | | {value:.2f} | | | " + pad + " |")
        return lines
    lines = ["| pair | utterances | BLEU (ours) | BLEU tokenizer | chrF (ours) | " + " | ".join(extra) + " |",
             "|---" * (5 + len(extra)) + "|"]
    for lang, r in rows.items():
        lines.append(f"| en-{lang} | {r['utterances']} | {r['bleu']:.2f} | {r['bleu_tokenize']} | {r['chrf']:.2f} | "
                     + " | ".join(str(r.get(k, "")) for k in extra) + " |")
    label = "15-pair average" if summary["is_15_language_average"] else f"average of {len(rows)} pairs"
    lines.append(f"| **{label}** | | **{summary['average']:.2f}** | | {summary['chrf_average']:.2f} | " + pad + " |")
    return lines
