"""Modality-gap report of one model, from its decodes: per-language BLEU and gaps with intervals.

Modality-gap report of one model (the gap ComSL's cross-modality learning closes, paper §3.3):
per language, BLEU of speech translation (ST), of text translation from the gold transcript (MT)
and of the cascade ASR -> MT through the same model, with the gaps MT - ST and cascade - ST and
their paired-bootstrap intervals; plus per-utterance rows for the HTML page (``gap_page``).

Inputs are four decoded systems (``decoded_system``): ``st/``, ``asr/``, ``mt/`` and ``cascade/``
folders of ``generate-SUBSET.txt`` logs, as ``scripts/modality_gap.py`` writes them.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

from comsl_fairseq.evaluation.decoded_system import align, read_system
from comsl_fairseq.evaluation.scoring import (
    BOOTSTRAP_SAMPLES,
    CHARACTER_LANGS,
    asr_scores,
    corpus_scores,
    error_rate,
    paired_bootstrap,
    sentence_scores,
)

logger = logging.getLogger(__name__)

SYSTEMS = ("st", "asr", "mt", "cascade")
TRANSLATIONS = ("st", "mt", "cascade")


@dataclass
class Utterance:
    """One test utterance with every system's output and sentence-level scores."""
    subset: str
    index: int
    lang: str
    transcript: str  # gold, from the ASR references
    reference: str  # gold translation
    asr: str
    asr_error: float  # normalised WER (CER for zh-CN / ja) of this sentence, %
    outputs: dict  # {"st" | "mt" | "cascade": hypothesis}
    scores: dict  # {"st" | "mt" | "cascade": {"bleu": x, "chrf": y}}

    @property
    def gap_mt_st(self) -> float:
        return round(self.scores["mt"]["bleu"] - self.scores["st"]["bleu"], 1)

    @property
    def gap_cascade_st(self) -> float:
        return round(self.scores["cascade"]["bleu"] - self.scores["st"]["bleu"], 1)


def load_systems(decoded: Path, data: Path | None) -> dict:
    systems = {}
    for name in SYSTEMS:
        folder = Path(decoded) / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} missing: decode with scripts/modality_gap.py first")
        systems[name] = read_system(folder, data)
    return systems


def language_report(systems: dict, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """{language: row} with ST / MT / cascade BLEU + chrF, ASR error and the two gaps."""
    st_mt = align(systems["st"], systems["mt"], "ST", "MT")
    st_cascade = align(systems["st"], systems["cascade"], "ST", "cascade")
    rows = {}
    for lang, (st, mt, refs) in st_mt.items():
        cascade = st_cascade[lang][1]
        row = {"utterances": len(refs)}
        for name, hyps in (("st", st), ("mt", mt), ("cascade", cascade)):
            scores = corpus_scores(hyps, refs)
            row[f"{name}_bleu"], row[f"{name}_chrf"] = scores["bleu"], scores["chrf"]
            row["bleu_signature"], row["chrf_signature"] = scores["bleu_signature"], scores["chrf_signature"]
        asr = systems["asr"][lang]
        row.update(asr_scores(asr.hyps, asr.refs, lang))
        for name, hyps in (("mt", mt), ("cascade", cascade)):
            r = paired_bootstrap(st, hyps, refs, "bleu", samples)
            row[f"gap_{name}_st"] = round(r.delta, 2)
            row[f"gap_{name}_st_ci"] = [round(r.delta_low, 2), round(r.delta_high, 2)]
            row[f"gap_{name}_st_p"] = round(r.p_value, 4)
        rows[lang] = row
    return rows


def utterances(systems: dict) -> list:
    """Every test utterance with its outputs and sentence-level scores (rows of the HTML page)."""
    out = []
    for lang, st in sorted(systems["st"].items()):
        by_key = {name: dict(zip(systems[name][lang].keys, zip(systems[name][lang].hyps,
                                                                systems[name][lang].refs, strict=True),
                                 strict=True)) for name in SYSTEMS}
        for key, ref in zip(st.keys, st.refs, strict=True):
            asr_hyp, transcript = by_key["asr"][key]
            outputs = {name: by_key[name][key][0] for name in TRANSLATIONS}
            out.append(Utterance(
                subset=key[0], index=key[1], lang=lang, transcript=transcript, reference=ref, asr=asr_hyp,
                asr_error=round(error_rate([asr_hyp], [transcript], chars=lang in CHARACTER_LANGS), 1),
                outputs=outputs, scores={name: sentence_scores(h, ref) for name, h in outputs.items()}))
    return out


def markdown(rows: dict) -> str:
    """The per-language table with both gaps and their 95 % intervals."""
    lines = ["| language | n | ST BLEU | MT BLEU | cascade BLEU | MT − ST [95 % CI] | cascade − ST [95 % CI] "
             "| ST chrF | MT chrF | cascade chrF | ASR error |", "|---" * 11 + "|"]
    for lang, r in rows.items():
        asr = f"WER {r['asr_wer']:.1f}" if "asr_wer" in r else f"CER {r['asr_cer']:.1f}"
        gaps = [f"{r[f'gap_{n}_st']:+.2f} [{r[f'gap_{n}_st_ci'][0]:+.2f}, {r[f'gap_{n}_st_ci'][1]:+.2f}]"
                for n in ("mt", "cascade")]
        lines.append(f"| {lang} | {r['utterances']} | {r['st_bleu']:.2f} | {r['mt_bleu']:.2f} | "
                     f"{r['cascade_bleu']:.2f} | {gaps[0]} | {gaps[1]} | {r['st_chrf']:.2f} | {r['mt_chrf']:.2f} | "
                     f"{r['cascade_chrf']:.2f} | {asr} |")
    first = next(iter(rows.values()), None)
    if first:
        lines += ["", f"BLEU: `{first['bleu_signature']}`; chrF: `{first['chrf_signature']}`; intervals: sacreBLEU "
                  f"paired bootstrap, {BOOTSTRAP_SAMPLES} resamples; ASR: Whisper BasicTextNormalizer."]
    return "\n".join(lines) + "\n"
