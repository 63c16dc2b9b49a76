"""Criterion ``comsl_multitask``: the weighted sum of ComSL's loss terms (SPEC §4).

total = st_weight * ST + asr_weight * ASR + mt_weight * MT (+ the cross-modality terms,
added with the full objective). A term whose weight is zero is not computed at all:
its branch is not requested from the model, so none of its passes run.

``sample_size`` is the number of target (translation) tokens in the batch. Every term
is a sum over its own tokens, so fairseq's division by ``sample_size`` turns the total
into a per-translation-token loss, whatever mix of terms is active; the gradient scale
then does not depend on batch size, as in fairseq's translation criteria.
"""
import math
from dataclasses import dataclass, field

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from comsl_fairseq.criterions.terms import token_cross_entropy


@dataclass
class ComslMultitaskConfig(FairseqDataclass):
    st_weight: float = field(default=0.35, metadata={"help": "weight of the speech translation term"})
    asr_weight: float = field(default=0.35, metadata={"help": "weight of the speech recognition term"})
    mt_weight: float = field(default=0.2, metadata={"help": "weight of the text translation term"})


# branch name -> (sample key of its target, config weight name)
TERMS = {"st": ("target", "st_weight"), "asr": ("transcript", "asr_weight"), "mt": ("target", "mt_weight")}


@register_criterion("comsl_multitask", dataclass=ComslMultitaskConfig)
class ComslMultitaskCriterion(FairseqCriterion):
    """Weighted multi-task loss; each term logged under its own key."""

    def __init__(self, task, st_weight, asr_weight, mt_weight):
        super().__init__(task)
        self.weights = {"st": st_weight, "asr": asr_weight, "mt": mt_weight}
        bad = {k: w for k, w in self.weights.items() if w < 0}
        if bad:
            raise ValueError(f"loss weights must be >= 0, got {bad}")
        self.active = tuple(k for k, w in self.weights.items() if w > 0)
        if not self.active:
            raise ValueError("every loss weight is zero: nothing to train")

    def forward(self, model, sample, reduce=True):
        outputs = model(**sample["net_input"], branches=self.active)
        loss = 0.0
        logging_output = {"ntokens": sample["ntokens"], "nsentences": sample["nsentences"],
                          "sample_size": sample["ntokens"]}
        for name in self.active:
            target_key, _ = TERMS[name]
            logits = outputs[name][0]
            term = token_cross_entropy(logits, sample[target_key], self.padding_idx)
            loss = loss + self.weights[name] * term.loss
            logging_output[f"{name}_loss"] = term.loss.detach().item()
            logging_output[f"{name}_ntokens"] = term.n_tokens
            logging_output[f"{name}_correct"] = term.n_correct
        logging_output["loss"] = loss.detach().item()
        return loss, sample["ntokens"], logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = total("sample_size")
        if sample_size > 0:
            metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        for name in TERMS:
            n = total(f"{name}_ntokens")
            if n > 0:
                metrics.log_scalar(f"{name}_loss", total(f"{name}_loss") / n / math.log(2), n, round=3)
                metrics.log_scalar(f"{name}_acc", 100.0 * total(f"{name}_correct") / n, n, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
