"""BLEU and chrF, ASR error rates, sentence scores and paired bootstrap: every score, in one place.

Scores for decoded systems: corpus BLEU and chrF with their sacreBLEU
signatures, normalised ASR word / character error rates, sentence-level scores, and paired
bootstrap resampling between two systems on the same references.

- Translation: sacreBLEU BLEU and chrF (chrF2, character 6-grams). BLEU tokenizes by target
  language, as sacreBLEU does for WMT: ``zh`` for Chinese, ``ja-mecab`` for Japanese (MeCab with
  the IPA dictionary; where MeCab is not installed, ``char`` with a warning, and the signature
  says so), ``13a`` for every other language (English targets of X->En included).
- ASR: Whisper's ``BasicTextNormalizer`` (lower case, punctuation and bracketed asides removed,
  as the original ComSL code scores ASR) on hypothesis and reference, then WER; for the
  languages written without spaces (zh-CN, ja) CER over the normalised characters.
- Significance: sacreBLEU's paired bootstrap (``sacrebleu.significance.PairedTest``, test type
  ``bs``) for the p-value; the interval of the difference is read from the same resamples
  (same seed, same indices) through the metric's sufficient statistics.
"""
import functools
import logging
import os
from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest

logger = logging.getLogger(__name__)

CHARACTER_LANGS = frozenset({"zh-CN", "ja"})  # written without spaces: CER instead of WER
BOOTSTRAP_SAMPLES = 1000  # sacreBLEU's default for the paired bootstrap
SACREBLEU_SEED = 12345  # sacreBLEU's default seed (SACREBLEU_SEED), fixed so reports are repeatable


# Target languages whose text has no spaces between words, and sacreBLEU's tokenizer for each.
_BLEU_TOKENIZER = {"zh-CN": "zh", "zh": "zh", "zh_CN": "zh", "ja": "ja-mecab", "ja_XX": "ja-mecab"}
_FALLBACK_WARNED = set()


def bleu_tokenizer(lang: str | None = None) -> str:
    """sacreBLEU's tokenizer for a target language (CoVoST or mBART-50 code; None: English):
    ``zh`` for Chinese, ``ja-mecab`` for Japanese, ``13a`` otherwise. ``ja-mecab`` needs
    MeCab and its IPA dictionary (``mecab-python3``, ``ipadic``); without them Japanese is
    scored with ``char`` (one token per character) and a warning, never silently."""
    tokenize = _BLEU_TOKENIZER.get(lang or "", "13a")
    if tokenize == "ja-mecab" and mecab_problem():
        if lang not in _FALLBACK_WARNED:
            _FALLBACK_WARNED.add(lang)
            logger.warning("BLEU for %s: sacreBLEU's ja-mecab tokenizer cannot run (%s); scoring with the 'char' "
                           "tokenizer instead (tok:char in the signature): install mecab-python3 and ipadic for "
                           "ja-mecab", lang, mecab_problem())
        return "char"
    return tokenize


@functools.lru_cache(maxsize=1)
def mecab_problem() -> str:
    """Why sacreBLEU's ja-mecab tokenizer cannot be built here ("" when it can)."""
    try:
        BLEU(tokenize="ja-mecab")
    except (RuntimeError, AssertionError, ImportError) as e:
        return " ".join(str(e).split()) or type(e).__name__
    return ""


def bleu_metric(lang: str | None = None) -> BLEU:
    """Corpus BLEU as reported everywhere in this project, tokenized for the target language
    (:func:`bleu_tokenizer`; 13a for English)."""
    return BLEU(tokenize=bleu_tokenizer(lang))


def chrf_metric() -> CHRF:
    return CHRF()


def corpus_scores(hyps: list, refs: list, lang: str | None = None) -> dict:
    """BLEU and chrF of one system, with both signatures; ``lang``: the target language
    (None: English)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    bleu, chrf = bleu_metric(lang), chrf_metric()
    return {"bleu": round(bleu.corpus_score(hyps, [refs]).score, 2),
            "chrf": round(chrf.corpus_score(hyps, [refs]).score, 2),
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


def sentence_scores(hyp: str, ref: str) -> dict:
    """Sentence BLEU (effective order, sacreBLEU's exp smoothing) and chrF of one hypothesis."""
    return {"bleu": round(BLEU(effective_order=True).sentence_score(hyp, [ref]).score, 1),
            "chrf": round(CHRF().sentence_score(hyp, [ref]).score, 1)}


_NORMALIZER = None


def normalize_asr(text: str) -> str:
    """Whisper's ``BasicTextNormalizer``: lower case, punctuation and [..] / (..) asides removed."""
    global _NORMALIZER
    if _NORMALIZER is None:
        from whisper.normalizers import BasicTextNormalizer

        _NORMALIZER = BasicTextNormalizer()
    return _NORMALIZER(text)


def _units(text: str, chars: bool) -> list:
    text = normalize_asr(text)
    return list(text.replace(" ", "")) if chars else text.split()


def edit_distance(hyp: list, ref: list) -> int:
    """Levenshtein distance between two token lists (substitutions, insertions, deletions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(hyps: list, refs: list, chars: bool = False) -> float:
    """Normalised WER (or CER when ``chars``) in %, errors summed over the corpus."""
    errors = units = 0
    for h, r in zip(hyps, refs, strict=True):
        ref_units = _units(r, chars)
        errors += edit_distance(_units(h, chars), ref_units)
        units += len(ref_units)
    return 100.0 * errors / max(units, 1)


def asr_scores(hyps: list, refs: list, lang: str) -> dict:
    """``{"asr_wer": x}`` or, for zh-CN / ja, ``{"asr_cer": x}``; text normalised first."""
    chars = lang in CHARACTER_LANGS
    return {"asr_cer" if chars else "asr_wer": round(error_rate(hyps, refs, chars=chars), 2)}


@dataclass
class PairedResult:
    """Paired bootstrap of system B against baseline A on the same references."""
    metric: str
    a: float
    b: float
    delta: float  # b - a on the full test set
    delta_low: float  # 95 % interval of b - a over the resamples
    delta_high: float
    p_value: float  # sacreBLEU's: chance of a difference this large if the systems were equal
    n: int
    samples: int
    signature: str

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _resample_indices(n: int, samples: int) -> np.ndarray:
    # the indices sacreBLEU's paired bootstrap draws (``_paired_bs_test``) for this seed
    rng = np.random.default_rng(SACREBLEU_SEED)
    return rng.choice(n, size=(samples, n), replace=True)


def paired_bootstrap(hyps_a: list, hyps_b: list, refs: list, metric_name: str = "bleu",
                     samples: int = BOOTSTRAP_SAMPLES, lang: str | None = None) -> PairedResult:
    """sacreBLEU's paired bootstrap test of B against A, plus the 95 % interval of B - A
    (``lang``: the target language, for BLEU's tokenizer)."""
    if not (len(hyps_a) == len(hyps_b) == len(refs)) or not refs:
        raise ValueError(f"paired bootstrap needs as many hypotheses as references: "
                         f"{len(hyps_a)} / {len(hyps_b)} / {len(refs)}")
    metric = bleu_metric(lang) if metric_name == "bleu" else chrf_metric()
    old_seed = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(SACREBLEU_SEED)
    try:
        signatures, results = PairedTest([("A", hyps_a), ("B", hyps_b)], {metric_name: metric}, [refs],
                                         test_type="bs", n_samples=samples)()
    finally:
        if old_seed is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = old_seed
    (key,) = [k for k in results if k != "System"]
    res_a, res_b = results[key]
    idx = _resample_indices(len(refs), samples)
    scores = {}
    for name, hyps in (("A", hyps_a), ("B", hyps_b)):
        stats = np.array(metric._extract_corpus_statistics(hyps, [refs]), dtype="float32")
        scores[name] = np.array([metric._compute_score_from_stats(stats[row].sum(0)).score for row in idx])
    if abs(scores["B"].mean() - res_b.mean) > 1e-3:  # the resamples must be sacreBLEU's own
        raise RuntimeError(f"bootstrap resamples differ from sacreBLEU's ({scores['B'].mean()} vs {res_b.mean}); "
                           "this sacreBLEU version draws its indices differently")
    low, high = np.percentile(scores["B"] - scores["A"], [2.5, 97.5])
    # sacreBLEU gives identical systems p = 1/(samples+1) (no resample differs "more" than 0);
    # the honest answer there is that nothing distinguishes them
    p_value = 1.0 if list(hyps_a) == list(hyps_b) else float(res_b.p_value)
    a, b = float(res_a.score), float(res_b.score)
    return PairedResult(metric_name, a, b, b - a, float(low), float(high), p_value, len(refs), samples,
                        str(signatures[key]))


def bootstrap_interval(hyps: list, refs: list, metric_name: str = "bleu",
                       samples: int = BOOTSTRAP_SAMPLES, lang: str | None = None) -> tuple:
    """(score, low, high): the corpus score and its 95 % bootstrap interval (percentiles over
    ``samples`` resamples of the utterances, the paired bootstrap's indices); ``lang``: the
    target language, for BLEU's tokenizer."""
    if len(hyps) != len(refs) or not refs:
        raise ValueError(f"bootstrap needs as many hypotheses as references: {len(hyps)} / {len(refs)}")
    metric = bleu_metric(lang) if metric_name == "bleu" else chrf_metric()
    stats = np.array(metric._extract_corpus_statistics(hyps, [refs]), dtype="float32")
    full = metric._compute_score_from_stats(stats.sum(0)).score
    scores = [metric._compute_score_from_stats(stats[row].sum(0)).score
              for row in _resample_indices(len(refs), samples)]
    low, high = np.percentile(scores, [2.5, 97.5])
    return float(full), float(low), float(high)


def stratified_bootstrap_mean(groups: dict, metric_name: str = "bleu",
                              samples: int = BOOTSTRAP_SAMPLES) -> PairedResult:
    """Paired bootstrap of the *mean over groups* (languages) of corpus scores, resampling within
    each group, as the paper's headline number is the mean of per-language BLEU.

    ``groups``: {name: (hyps_a, hyps_b, refs)}. The p-value follows sacreBLEU's definition
    (shifted absolute differences, +1 smoothing) on these stratified resamples.
    """
    metric = bleu_metric() if metric_name == "bleu" else chrf_metric()
    rng = np.random.default_rng(SACREBLEU_SEED)
    totals = {"A": np.zeros(samples), "B": np.zeros(samples)}
    full = {"A": 0.0, "B": 0.0}
    n = 0
    for hyps_a, hyps_b, refs in groups.values():
        idx = rng.choice(len(refs), size=(samples, len(refs)), replace=True)
        n += len(refs)
        for name, hyps in (("A", hyps_a), ("B", hyps_b)):
            st = np.array(metric._extract_corpus_statistics(hyps, [refs]), dtype="float32")
            # float(): chrF's score from float32 statistics is a numpy float32
            full[name] += float(metric._compute_score_from_stats(st.sum(0)).score) / len(groups)
            totals[name] += np.array([metric._compute_score_from_stats(st[row].sum(0)).score
                                      for row in idx]) / len(groups)
    deltas = totals["B"] - totals["A"]
    real = abs(full["B"] - full["A"])
    shifted = np.abs(deltas) - np.abs(deltas).mean()
    same = all(list(a) == list(b) for a, b, _ in groups.values())
    p = 1.0 if same else (np.sum(shifted > real).item() + 1) / (samples + 1)
    low, high = np.percentile(deltas, [2.5, 97.5])
    signature = f"{metric.get_signature()}|bs:{samples}|seed:{SACREBLEU_SEED}|stratified:{len(groups)}"
    return PairedResult(metric_name, full["A"], full["B"], full["B"] - full["A"], float(low), float(high),
                        float(p), n, samples, signature)
