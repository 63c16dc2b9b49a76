"""Criterion ``comsl_multitask``: the ComSL objective (paper §3).

    ST   = (1-a) CE(p(y|H_s), y) + a softCE(p(y|H_x) || p(y|H_s))          a = --ddm-alpha
    ASR  = CE(p(x|H_s), x)
    MT   = (1-a_t) CE(p(y|H_x), y) + a_t softCE(p_teacher || p(y|H_x))     a_t = --mt-reg-alpha
    CML  = (STM-ASR + STM-ST + MTP) / 3 + erm_weight ERM
    loss = st_weight ST + asr_weight ASR + mt_weight MT + cml_weight CML

with STM-ASR = CE(p(x|H_c^s), x), STM-ST the DDM-guided ST loss on p(y|H_c^s), MTP =
CE(p(x|H_c^x), x) at masked positions only, and ERM the normalised-representation
distance at mBART encoder layer --erm-layer (criterions/terms.py has each formula).

A zero weight (or alpha) means the passes that only that term needs are not run: the
criterion asks the model for exactly the branches it uses, in one forward call. The
original's seventh decoder pass (translation from H_c^x) feeds no loss and is not run.

With --output-layer fused (auto: for large vocabularies) or lean the decoder passes'
log-probabilities over the vocabulary are never held whole: they are computed a chunk of
tokens at a time from the passes' final states and the tied output matrix
(modules/chunked_output.py), fused with every token term's gradient in the forward, lean
term by term with the gradient recomputed in the backward; full materialises them once
per pass (the same losses).

``sample_size`` is the number of target (translation) tokens in the batch. Every term
is a sum over its own tokens, so fairseq's division by ``sample_size`` turns the total
into a per-translation-token loss whatever mix of terms is active; the gradient scale
then does not depend on batch size, as in fairseq's translation criteria.
"""
import logging
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Optional

import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging.meters import safe_round

from comsl_fairseq.criterions import terms as T
from comsl_fairseq.modules.branches import BRANCHES, FRAMES, branch_table
from comsl_fairseq.modules.chunked_output import (
    LARGE_VOCABULARY_ROWS,
    ProjectedStates,
    TokenTerm,
    fused_token_losses,
)
from comsl_fairseq.modules.cpu_matmul import use_onednn
from comsl_fairseq.vocab.languages import MASK_SYMBOL

logger = logging.getLogger(__name__)


@dataclass
class ComslMultitaskConfig(FairseqDataclass):
    st_weight: float = field(default=0.35, metadata={"help": "weight of the speech translation term (ST)"})
    asr_weight: float = field(default=0.35, metadata={"help": "weight of the speech recognition term (ASR)"})
    mt_weight: float = field(default=0.2, metadata={"help": "weight of the text translation term (MT)"})
    cml_weight: float = field(default=0.1, metadata={"help": "weight of cross-modality learning (CML)"})
    erm_weight: float = field(default=0.2, metadata={"help": "weight of ERM inside the CML term"})
    ddm_alpha: float = field(default=0.8, metadata={
        "help": "decoder distribution matching: share of softCE(p(y|H_x) || p(y|H_s)) in ST and STM-ST; 0 = off"})
    mt_reg_alpha: float = field(default=0.2, metadata={
        "help": "share of softCE(p_teacher || p(y|H_x)) in MT; used only with --mt-teacher"})
    mt_teacher: Optional[str] = field(default=None, metadata={
        "help": "frozen fine-tuned mBART (fairseq model.pt, or a comsl_fairseq checkpoint) for MT regularization"})
    mask_prob: float = field(default=0.15, metadata={
        "help": "share of transcript tokens replaced by <mask> in the CML input (never tags, </s>, padding; "
                "at least one per sentence, none with 0)"})
    erm_layer: int = field(default=4, metadata={
        "help": "mBART encoder layer whose output ERM compares (clamped to the encoder depth)"})
    output_layer: ChoiceEnum(["auto", "fused", "lean", "full"]) = field(default="auto", metadata={
        "help": "fused: compute the output layer, log-softmax, token losses and their gradients a chunk of tokens "
                "at a time in the forward (the terms on the same targets together, the DDM teacher's "
                "probabilities once for both its students), so no B x T x vocabulary tensor outlives its chunk "
                "and nothing is recomputed; lean: the same chunks with the gradients recomputed in the backward "
                "(one more output-layer product per pass, two with a teacher); full: keep every decoder pass's "
                "B x T x vocabulary fp32 log-probabilities (and the teachers' probabilities) alive through the "
                "backward. Losses and gradients agree to float rounding (under autocast the products run in its "
                "dtype, as the model's own output layer's would). auto: fused for vocabularies of "
                f"{LARGE_VOCABULARY_ROWS:,} rows or more (mBART-50's 250k), where the full tensors dominate the "
                "memory per utterance, full below (README, Speed)"})
    ctc_weight: float = field(default=0.0, metadata={
        "help": "weight of an auxiliary CTC loss of the transcript on H_s (our addition, not in the paper; "
                "helps models trained from scratch align speech early)"})


@register_criterion("comsl_multitask", dataclass=ComslMultitaskConfig)
class ComslMultitaskCriterion(FairseqCriterion):
    """Weighted ComSL terms; each logged with its loss and token accuracy under its own key."""

    def __init__(self, task, st_weight, asr_weight, mt_weight, cml_weight, erm_weight, ddm_alpha,
                 mt_reg_alpha, mt_teacher, mask_prob, erm_layer, output_layer="auto", ctc_weight=0.0):
        super().__init__(task)
        self.w = {"st": st_weight, "asr": asr_weight, "mt": mt_weight, "cml": cml_weight, "erm": erm_weight,
                  "ctc": ctc_weight}
        bad = {k: v for k, v in self.w.items() if v < 0}
        for name, alpha in (("ddm_alpha", ddm_alpha), ("mt_reg_alpha", mt_reg_alpha), ("mask_prob", mask_prob)):
            if not 0 <= alpha <= 1:
                bad[name] = alpha
        if bad:
            raise ValueError(f"loss weights must be >= 0 and alphas / mask_prob in [0, 1], got {bad}")
        if not any(self.w[k] > 0 for k in ("st", "asr", "mt", "cml", "ctc")):
            raise ValueError("every loss weight is zero: nothing to train")
        self.ddm_alpha, self.mt_reg_alpha, self.mask_prob = ddm_alpha, mt_reg_alpha, mask_prob
        self.erm_layer = erm_layer
        if output_layer == "auto":
            output_layer = "fused" if len(task.target_dictionary) >= LARGE_VOCABULARY_ROWS else "full"
        self.output_layer = output_layer
        self.chunked_output_layer = output_layer != "full"  # decoder passes kept as states, projected in chunks
        # each term's coefficient in the loss (what the fused output layer scales its gradients by)
        self.coefficients = {name: self.weighted_sum({k: T.TermResult(float(k == name), None, None)
                                                      for k in TERM_NAMES}) for name in TERM_NAMES}
        self._erm_clamp_noted = set()  # encoder depths the --erm-layer clamp was logged for
        self.mask_idx = task.target_dictionary.index(MASK_SYMBOL)
        self.special_ids = torch.tensor(sorted(task.tag_ids | {task.target_dictionary.eos(), self.padding_idx}))
        self.blank_idx = task.target_dictionary.bos()  # <s> never occurs in targets: the CTC blank
        # Held outside the module tree: never trained, never saved, never put in train mode.
        self._frozen = {}
        if mt_teacher and mt_weight > 0 and mt_reg_alpha > 0:
            from comsl_fairseq.modules.mbart import load_mbart_text_model

            self._frozen["teacher"] = load_mbart_text_model(mt_teacher, task.target_dictionary,
                                                            task.n_pretrained_rows, task.dictionary_path).freeze()
            logger.info("MT teacher from %s (frozen, eval mode, not saved)", mt_teacher)
        elif mt_teacher:
            logger.warning("--mt-teacher is given but MT regularization is off (mt_weight=%g, mt_reg_alpha=%g)",
                           mt_weight, mt_reg_alpha)

    @property
    def teacher(self):
        return self._frozen.get("teacher")

    def branches(self) -> dict:
        """{name: Branch} of the decoder passes the active terms need, and nothing else."""
        ddm = self.ddm_alpha > 0
        b = []
        if self.w["st"] > 0:
            b.append("st")
        if self.w["asr"] > 0:
            b.append("asr")
        if self.w["cml"] > 0:
            b += ["stm_asr", "stm_st", "mtp"]
        if self.w["mt"] > 0 or (ddm and ("st" in b or "stm_st" in b)):
            b.append("mt")  # also the DDM teacher
        if self.w["ctc"] > 0:
            b.append("ctc")
        return branch_table(b)

    def mask_transcript(self, transcript: torch.Tensor) -> tuple:
        """x~: the transcript with --mask-prob of its maskable tokens replaced by <mask>."""
        special = self._special_ids_on(transcript.device)
        maskable = ~torch.isin(transcript, special)
        return T.mask_tokens(transcript, maskable, self.mask_prob, self.mask_idx)

    def _special_ids_on(self, device) -> torch.Tensor:
        """Tags, </s> and padding on ``device``, copied there once rather than every step."""
        if self.special_ids.device != device:
            self.special_ids = self.special_ids.to(device)
        return self.special_ids

    def forward(self, model, sample, reduce=True):
        """Returns (loss, sample_size, logging output).

        ``loss`` is the weighted sum of the terms over the batch or, with ``reduce=False``,
        one weighted sum per sentence (B). The logging output holds tensors, as fairseq's
        own criteria do: ``reduce_metrics`` sums them, so the only host-device
        synchronisation here is the one finiteness check per step.
        """
        branches = self.branches()
        kwargs, masked = {}, None
        if self.w["cml"] > 0:
            kwargs["cml_text_tokens"], masked = self.mask_transcript(sample["transcript"])
            if self.w["erm"] > 0:
                kwargs["erm_layer"] = self.erm_layer_for(model)
        teacher = self.teacher
        if teacher is not None and model.decoder.output_projection.onednn and \
                not teacher.decoder.output_projection.onednn:  # the frozen teacher follows --cpu-matmul
            use_onednn(teacher.decoder)
        out = model(**sample["net_input"], branches=branches, features_only=self.chunked_output_layer, **kwargs)
        if self.chunked_output_layer:  # decoder states + the tied output matrix, projected chunk by chunk
            projection = model.decoder.output_projection
            weight, step = projection.current()  # this forward's view, gradient buffer
            dtype = output_layer_dtype(model, weight)
            out = {name: (ProjectedStates(o[0], weight, dtype, step, projection.onednn), *o[1:])
                   if name in TOKEN_BRANCHES else o for name, o in out.items()}
        results, fused_total = self.compute_terms(out, sample, branches, masked, reduce)
        loss = self.weighted_sum(results)
        if fused_total is not None:  # the token terms' gradient; adds 0 to the value, already in ``results``
            loss = loss + (fused_total - fused_total.detach())
        if not bool(torch.isfinite(loss).all()):
            self.report_non_finite(results, sample, model)

        log = {"ntokens": sample["ntokens"], "nsentences": sample["nsentences"], "sample_size": sample["ntokens"],
               "loss": loss.detach().sum()}
        for name, r in results.items():
            log[f"{name}_loss"] = r.loss.detach().sum()
            log[f"{name}_ntokens"] = r.n_tokens
            log[f"{name}_correct"] = r.n_correct
        return loss, sample["ntokens"], log

    def compute_terms(self, out: dict, sample, branches, masked, reduce: bool) -> tuple:
        """({term: TermResult}, the fused output layer's differentiable total or None).

        The target (and transcript) starts with the language tag that decoding forces with
        --prefix-size 1. It counts in every token loss and accuracy, as in the original
        ComSL code and mBART-50 fine-tuning (fairseq's --ignore-prefix-size 0): its loss
        becomes a near-constant after the first updates, and accuracies include one easy
        token per sentence, so they read a little higher than over words alone.

        With the fused output layer the token terms' losses in the results are values only:
        their gradient is that of the total, which :meth:`forward` adds to the weighted sum.
        """
        if self.output_layer == "full":  # log p once per decoder pass (the largest tensors of a step)
            lp = {name: T.log_probs(out[name][0]) for name in branches if name in TOKEN_BRANCHES}
        else:  # ProjectedStates: log p is computed a chunk of tokens at a time
            lp = {name: out[name][0] for name in branches if name in TOKEN_BRANCHES}
        y, x, pad = sample["target"], sample["transcript"], self.padding_idx
        # DDM: the model's own MT pass is the (detached) teacher of ST and STM-ST
        ddm = ("mt", self.ddm_alpha) if self.ddm_alpha > 0 and "mt" in lp else (None, 0.0)
        # term -> (target, positions counted besides non-pad ones, teacher, alpha)
        spec = {}
        if "st" in branches:
            spec["st"] = (y, None, *ddm)
        if "asr" in branches:
            spec["asr"] = (x, None, None, 0.0)
        if self.w["mt"] > 0:
            teacher = self.teacher_probs(sample)
            spec["mt"] = (y, None, teacher, self.mt_reg_alpha if teacher is not None else 0.0)
        if self.w["cml"] > 0:
            spec.update(stm_asr=(x, None, None, 0.0), stm_st=(y, None, *ddm), mtp=(x, masked, None, 0.0))
        total, results = None, {}
        if self.output_layer == "fused" and reduce and spec:
            keep = {name: t.ne(pad) if count is None else t.ne(pad) & count for name, (t, count, _, _) in spec.items()}
            tokens = {name: TokenTerm(lp[name], t, self.coefficients[name], keep[name], q, a)
                      for name, (t, _, q, a) in spec.items()}
            if ddm[0] and "mt" not in tokens:  # the MT pass only as DDM teacher (--mt-weight 0)
                tokens["mt"] = TokenTerm(lp["mt"], y, 0.0, y.ne(pad))
            total, per_token = fused_token_losses(tokens)
            for name, (t, _, _, _) in spec.items():
                results[name] = T.chunked_result(*per_token[name], t, keep[name], reduce)
        else:
            if ddm[0]:
                teacher = lp["mt"].detach()
                ddm_q = teacher if isinstance(teacher, ProjectedStates) else teacher.exp()
            for name, (t, count, q, a) in spec.items():
                q = ddm_q if isinstance(q, str) else q
                results[name] = T.distilled_cross_entropy(lp[name], t, pad, q, a, reduce, count=count)
        if self.w["cml"] > 0 and "erm" in out:
            results["erm"] = T.embedding_representation_matching(*out["erm"], reduce=reduce)
        if "ctc" in branches:
            results["ctc"] = T.ctc_on_speech(*out["ctc"], x, self._special_ids_on(x.device), self.blank_idx, reduce)
        return results, total

    def teacher_probs(self, sample) -> torch.Tensor | ProjectedStates | None:
        """p_teacher(y | x) of the frozen MT teacher (B x T x V; with a chunked output layer its
        unprojected ProjectedStates), or None without one."""
        if self.teacher is None:
            return None
        net_input = sample["net_input"]
        self.teacher.to(sample["target"].device)
        with torch.no_grad():
            out = self.teacher(net_input["src_text_tokens"], prev_output_tokens=net_input["prev_output_tokens"],
                               features_only=self.chunked_output_layer)[0]
        if self.chunked_output_layer:
            projection = self.teacher.decoder.output_projection
            return ProjectedStates(out, projection.weight, projection.weight.dtype, onednn=projection.onednn)
        return torch.softmax(out.float(), dim=-1)

    def weighted_sum(self, results: dict) -> torch.Tensor:
        """0.35 ST + 0.35 ASR + 0.2 MT + 0.1 ((STM-ASR + STM-ST + MTP) / 3 + 0.2 ERM) (+ CTC)."""
        loss = sum(self.w[k] * results[k].loss for k in ("st", "asr", "mt", "ctc") if k in results)
        if self.w["cml"] > 0:
            cml_loss = (results["stm_asr"].loss + results["stm_st"].loss + results["mtp"].loss) / 3
            if "erm" in results:
                cml_loss = cml_loss + self.w["erm"] * results["erm"].loss
            loss = loss + self.w["cml"] * cml_loss
        return loss

    def report_non_finite(self, results: dict, sample, model) -> None:
        """Name the term(s) whose loss is NaN or infinite, and the utterances (manifest ids).
        Under fp16/AMP an overflow is fairseq's loss scaler's business (it skips the step),
        so we only warn there; in full precision it is a real fault and stops training."""
        bad = [name for name, r in results.items() if not bool(torch.isfinite(r.loss).all())]
        ids = list(sample.get("utt_id") or [f"#{i}" for i in sample["id"].tolist()])
        shown = ids[:10] + ([f"... {len(ids) - 10} more"] if len(ids) > 10 else [])
        msg = f"non-finite loss in term(s) {bad or ['(weighted sum)']} for the batch of utterances {shown}"
        low_precision = torch.is_autocast_enabled() or next(model.parameters()).dtype in (torch.float16,
                                                                                          torch.bfloat16)
        if low_precision:
            logger.warning("%s (reduced precision: left to the loss scaler)", msg)
            return
        raise FloatingPointError(msg)

    def erm_layer_for(self, model) -> int:
        """--erm-layer, clamped to the model's mBART encoder depth (said once in the log)."""
        n_layers = len(model.encoder.mbart.layers)
        if self.erm_layer > n_layers and n_layers not in self._erm_clamp_noted:
            self._erm_clamp_noted.add(n_layers)
            logger.warning("--erm-layer %d > %d mBART encoder layers: using layer %d", self.erm_layer, n_layers,
                           n_layers)
        return min(self.erm_layer, n_layers)

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        """Sum the logging outputs (tensors stay on their device) and derive each term's
        per-token loss and accuracy only when a log line is written."""
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = total("sample_size")
        if sample_size > 0:
            metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        for name in TERM_NAMES:
            if not any(f"{name}_ntokens" in log for log in logging_outputs):
                continue
            for part in ("loss", "ntokens", "correct"):
                metrics.log_scalar_sum(f"_{name}_{part}", total(f"{name}_{part}"))
            # token losses in bits per token, as fairseq logs; ERM as mean distance per frame
            scale = 1.0 if name == "erm" else 1 / math.log(2)
            metrics.log_derived(f"{name}_loss", partial(_ratio, f"_{name}_loss", f"_{name}_ntokens", scale, 3))
            if name not in ("erm", "ctc"):
                metrics.log_derived(f"{name}_acc", partial(_ratio, f"_{name}_correct", f"_{name}_ntokens", 100.0, 2))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def output_layer_dtype(model, weight: torch.Tensor) -> torch.dtype:
    """The dtype the chunked output layer's products run in: the one the model's own output layer
    would use, i.e. the active autocast's (fairseq's --amp, the benchmark's --bf16), bf16 under
    the model's --autocast-bf16, else the weight's."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.bfloat16 if model.autocast_bf16 else weight.dtype


# The terms a logging output may hold: one per branch, and ERM.
TERM_NAMES = (*BRANCHES, "erm")
# Branches whose loss reads the decoder's token distribution (not CTC's frames).
TOKEN_BRANCHES = tuple(name for name, b in BRANCHES.items() if b.decoder_input != FRAMES)


def _ratio(num: str, den: str, scale: float, digits: int, meters) -> float:
    """A derived metric: sum of ``num`` / sum of ``den`` (0 when nothing was counted)."""
    n = utils.item(meters[den].sum)
    return safe_round(scale * utils.item(meters[num].sum) / n, digits) if n > 0 else 0.0
