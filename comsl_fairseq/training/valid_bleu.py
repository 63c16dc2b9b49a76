"""Validation BLEU for checkpoint selection, from sacreBLEU statistics that sum across workers.

Validation BLEU for checkpoint selection: sacreBLEU statistics that sum across batches
and workers, pooled over the validation set or kept per source language, and the
selection of every N-th utterance to decode.

The original ComSL picks its checkpoint by the mean of per-language BLEU on every 4th dev
utterance: a pooled BLEU is dominated by fr/de/ca/es (57 % of CoVoST 2 dev), and decoding
all 94,780 dev utterances with beam 5 every epoch costs hours. fairseq sums logging
outputs key by key across workers, so every batch carries the same keys: one set per
language that any loaded validation split holds, zeros where a batch has none of it.
"""
import numpy as np
import sacrebleu
import torch
from fairseq import metrics

BLEU_ORDER = 4
POOLED = ""  # key prefix of the pooled statistics


def stat_names() -> list:
    return ["sys_len", "ref_len"] + [f"{kind}_{i}" for kind in ("counts", "totals") for i in range(BLEU_ORDER)]


def key(lang: str, name: str) -> str:
    """Logging-output key of one statistic; ``lang`` POOLED for the whole set."""
    return f"_bleu_{lang}_{name}" if lang else f"_bleu_{name}"


def bleu_stats(hyps: list, refs: list, tokenize: str) -> dict:
    """{statistic name: int} of sacreBLEU over these sentences (zeros when there are none)."""
    if not hyps:
        return dict.fromkeys(stat_names(), 0)
    s = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize)
    out = {"sys_len": s.sys_len, "ref_len": s.ref_len}
    for i in range(BLEU_ORDER):
        out[f"counts_{i}"], out[f"totals_{i}"] = s.counts[i], s.totals[i]
    return out


def add_stats(logging_output: dict, lang: str, stats: dict) -> None:
    for name, value in stats.items():
        logging_output[key(lang, name)] = value


def log_meters(logging_outputs: list, lang: str) -> None:
    """Sum one language's (or the pooled) statistics into fairseq's meters."""
    for name in stat_names():
        k = key(lang, name)
        metrics.log_scalar(k, sum(log.get(k, 0) for log in logging_outputs))


def bleu_from_meters(meters, lang: str = POOLED):
    """BLEU from the summed meters; None when no reference word was decoded."""
    if meters[key(lang, "ref_len")].sum == 0:
        return None
    if meters[key(lang, "totals_0")].sum == 0:
        return 0.0  # no hypothesis word at all (e.g. an untrained model emitting only </s>)
    score = sacrebleu.BLEU.compute_bleu(
        correct=[int(meters[key(lang, f"counts_{i}")].sum) for i in range(BLEU_ORDER)],
        total=[int(meters[key(lang, f"totals_{i}")].sum) for i in range(BLEU_ORDER)],
        sys_len=int(meters[key(lang, "sys_len")].sum),
        ref_len=int(meters[key(lang, "ref_len")].sum),
        smooth_method="exp",
    ).score
    return round(float(np.float64(score)), 2)


def mean_language_bleu(meters, langs) -> float:
    """Unweighted mean of the per-language BLEU over the languages that were decoded."""
    scores = [b for b in (bleu_from_meters(meters, lang) for lang in langs) if b is not None]
    return round(sum(scores) / len(scores), 2) if scores else 0.0


def select_rows(sample: dict, keep: torch.Tensor) -> dict:
    """The batch restricted to the rows where ``keep`` (B bool) is True: every tensor whose
    first dimension is the batch is indexed, nested dicts (net_input) included."""
    batch = sample["id"].numel()

    def pick(value):
        if isinstance(value, dict):
            return {k: pick(v) for k, v in value.items()}
        if torch.is_tensor(value) and value.dim() > 0 and value.size(0) == batch:
            return value[keep]
        return value

    out = pick(sample)
    out["nsentences"] = int(keep.sum())
    return out
