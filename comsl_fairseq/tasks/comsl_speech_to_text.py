"""Task ``comsl_speech_to_text``: speech translation with transcripts (SPEC §3, §7).

Reads fairseq speech-to-text manifests and the data ``config.yaml`` beside them,
builds the mBART-50 dictionary with ComSL's extra tags, and yields batches that carry
audio, transcript tokens and translation tokens together. Decoding forces the target
language tag (``--prefix-size 1``) and strips every language tag from hypotheses and
references, so tags never count in BLEU. ``--eval-bleu`` scores the validation set
(tag forced) for ``--best-checkpoint-metric bleu --maximize-best-checkpoint-metric``.
"""
import logging
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sacrebleu
from fairseq import metrics
from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from comsl_fairseq.data.audio import SAMPLE_RATE
from comsl_fairseq.data.config import DataConfig
from comsl_fairseq.data.speech_text_dataset import SpeechTextDataset
from comsl_fairseq.data.vocabulary import TextTokenizer, build_dictionary, language_tag_ids
from comsl_fairseq.setup_checks import check_criterion_setup, check_model_setup

logger = logging.getLogger(__name__)

BLEU_ORDER = 4


@dataclass
class ComslSpeechToTextConfig(FairseqDataclass):
    data: str = field(default="???", metadata={"help": "folder with the manifests ({split}.tsv) and config.yaml"})
    config_yaml: str = field(default="config.yaml", metadata={"help": "data config, relative to the data folder"})
    eval_bleu: bool = field(default=False, metadata={"help": "decode the validation set and log sacreBLEU as 'bleu'"})
    eval_bleu_beam: int = field(default=5, metadata={"help": "beam size for --eval-bleu"})
    eval_bleu_max_len_b: int = field(default=200, metadata={"help": "maximum hypothesis length for --eval-bleu"})
    eval_bleu_tokenize: str = field(default="13a", metadata={"help": "sacreBLEU tokenizer for --eval-bleu"})
    eval_bleu_print_samples: bool = field(default=False, metadata={"help": "log one hypothesis per batch"})
    text_only: bool = field(default=False, metadata={
        "help": "transcript -> translation only (the MT stage): audio is neither checked nor read; use with "
                "--st-weight 0 --asr-weight 0 --cml-weight 0 --ddm-alpha 0"})
    decode_task: ChoiceEnum(["st", "asr", "mt"]) = field(default="st", metadata={
        "help": "what fairseq-generate decodes: st = speech -> translation; asr = speech -> transcript "
                "(references are transcripts); mt = gold transcript -> translation (text path, no audio)"})
    fail_on_bad_input: bool = field(default=False, metadata={
        "help": "stop at the first unusable manifest row or clip instead of skipping and counting it"})
    seed: int = II("common.seed")


@register_task("comsl_speech_to_text", dataclass=ComslSpeechToTextConfig)
class ComslSpeechToTextTask(FairseqTask):
    """Speech-to-text translation with audio, transcript and translation in every batch."""

    def __init__(self, cfg: ComslSpeechToTextConfig, data_cfg: DataConfig, dictionary, n_pretrained_rows):
        super().__init__(cfg)
        self.data_cfg = data_cfg
        self.tgt_dict = dictionary
        self.n_pretrained_rows = n_pretrained_rows  # rows an mBART-50 checkpoint must have
        self.dictionary_path = str(data_cfg.vocab_filename)
        self.tokenizer = TextTokenizer(data_cfg.sentencepiece_model, dictionary)
        self.tag_ids = language_tag_ids(dictionary)
        self.sequence_generator = None
        self.bpe = self.build_bpe()

    @classmethod
    def setup_task(cls, cfg: ComslSpeechToTextConfig, **kwargs):
        if cfg.data in (None, "", "???"):
            raise ValueError("comsl_speech_to_text needs the data folder as first argument")
        config_path = Path(cfg.config_yaml)
        if not config_path.is_absolute():
            config_path = Path(cfg.data) / config_path
        data_cfg = DataConfig.load(config_path)
        dictionary, n_pretrained = build_dictionary(data_cfg.vocab_filename)
        logger.info("dictionary: %d symbols (%s + tags + <mask> = %d pretrained rows, + %d added tags)",
                    len(dictionary), data_cfg.vocab_filename.name, n_pretrained, len(dictionary) - n_pretrained)
        return cls(cfg, data_cfg, dictionary, n_pretrained)

    # ------------------------------------------------------------------ data
    def manifest_paths(self, split: str) -> list:
        """``train`` -> DATA/train.tsv; ``train_fr_en,train_de_en`` (or ``+``, which also works
        inside --valid-subset, where fairseq itself splits on commas) concatenates manifests."""
        names = [n.strip() for n in split.replace("+", ",").split(",") if n.strip()]
        return [Path(self.cfg.data) / f"{name}.tsv" for name in names]

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        self.datasets[split] = SpeechTextDataset.from_manifests(
            split, self.manifest_paths(split), self.data_cfg, self.tgt_dict, self.tokenizer,
            shuffle=split.startswith("train"), fail_on_bad_input=self.cfg.fail_on_bad_input,
            text_only=self.cfg.text_only or self.cfg.decode_task == "mt", decode_task=self.cfg.decode_task,
        )

    @property
    def source_dictionary(self):
        return None  # the source is audio

    @property
    def target_dictionary(self):
        return self.tgt_dict

    def max_positions(self):
        return int(self.data_cfg.max_audio_seconds * SAMPLE_RATE), self.data_cfg.max_text_tokens

    # ----------------------------------------------------------------- model
    def build_model(self, cfg, from_checkpoint=False):
        if not from_checkpoint:
            check_model_setup(cfg)
        model = super().build_model(cfg, from_checkpoint)
        if self.cfg.eval_bleu:
            if self.cfg.text_only:
                raise ValueError("--eval-bleu decodes speech; it cannot be combined with --text-only")
            gen_args = Namespace(beam=self.cfg.eval_bleu_beam, max_len_b=self.cfg.eval_bleu_max_len_b, prefix_size=1)
            self.sequence_generator = self.build_generator([model], gen_args)
        return model

    def build_criterion(self, cfg, from_checkpoint=False):
        check_criterion_setup(cfg, self.cfg.text_only)
        return super().build_criterion(cfg, from_checkpoint)

    def optimizer_step(self, optimizer, model, update_num):
        """While Whisper is frozen its parameters must not move. They get no gradient, but
        a distributed wrapper (legacy_ddp) fills missing gradients with zeros, and AdamW's
        decoupled weight decay would still shrink the weights: drop those gradients so the
        optimizer skips the parameters altogether. (--fp16, whose FP16Optimizer has copied
        the gradients already, is refused with freezing when the model is built.)"""
        frozen = model.frozen_parameters() if hasattr(model, "frozen_parameters") else []
        for p in frozen:
            p.grad = None
        super().optimizer_step(optimizer, model, update_num)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        if getattr(args, "prefix_size", 0) != 1:
            raise ValueError("comsl_speech_to_text decodes with the target language tag forced: "
                             "pass --prefix-size 1")
        extra = dict(extra_gen_cls_kwargs or {})
        extra["symbols_to_strip_from_output"] = set(extra.get("symbols_to_strip_from_output") or ()) | self.tag_ids
        return super().build_generator(models, args, seq_gen_cls=seq_gen_cls, extra_gen_cls_kwargs=extra, **kwargs)

    def build_bpe(self, args=None):
        """SentencePiece from the data config, used by fairseq-generate to detokenize."""
        return SentencepieceBPE(SentencepieceConfig(sentencepiece_model=str(self.data_cfg.sentencepiece_model)))

    # ------------------------------------------------------------ valid BLEU
    def decode_tokens(self, tokens) -> str:
        """Token ids -> detokenized text, with every tag, </s> and padding removed."""
        text = self.tgt_dict.string(tokens.int().cpu(), extra_symbols_to_ignore=self.tag_ids,
                                    unk_string="UNKNOWNTOKENINHYP")
        return self.bpe.decode(text) if text else ""

    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if self.cfg.eval_bleu:
            hyps, refs = self.translate_batch(model, sample)
            stats = sacrebleu.corpus_bleu(hyps, [refs], tokenize=self.cfg.eval_bleu_tokenize)
            logging_output["_bleu_sys_len"] = stats.sys_len
            logging_output["_bleu_ref_len"] = stats.ref_len
            for i in range(BLEU_ORDER):
                logging_output[f"_bleu_counts_{i}"] = stats.counts[i]
                logging_output[f"_bleu_totals_{i}"] = stats.totals[i]
            if self.cfg.eval_bleu_print_samples:
                logger.info("example hypothesis: %s", hyps[0])
                logger.info("example reference:  %s", refs[0])
        return loss, sample_size, logging_output

    def translate_batch(self, model, sample) -> tuple:
        """Beam-search a batch with the target tag forced; returns (hypotheses, references)."""
        gen_out = self.inference_step(self.sequence_generator, [model], sample,
                                      prefix_tokens=sample["target"][:, :1])
        hyps = [self.decode_tokens(h[0]["tokens"]) for h in gen_out]
        refs = [self.decode_tokens(t[t.ne(self.tgt_dict.pad())]) for t in sample["target"]]
        return hyps, refs

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        if not self.cfg.eval_bleu:
            return

        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        metrics.log_scalar("_bleu_sys_len", total("_bleu_sys_len"))
        metrics.log_scalar("_bleu_ref_len", total("_bleu_ref_len"))
        for i in range(BLEU_ORDER):
            metrics.log_scalar(f"_bleu_counts_{i}", total(f"_bleu_counts_{i}"))
            metrics.log_scalar(f"_bleu_totals_{i}", total(f"_bleu_totals_{i}"))
        metrics.log_derived("bleu", _bleu_from_meters)


def _bleu_from_meters(meters) -> float:
    if meters["_bleu_totals_0"].sum == 0:
        return 0.0  # no hypothesis word at all (e.g. an untrained model emitting only </s>)
    score = sacrebleu.BLEU.compute_bleu(
        correct=[int(meters[f"_bleu_counts_{i}"].sum) for i in range(BLEU_ORDER)],
        total=[int(meters[f"_bleu_totals_{i}"].sum) for i in range(BLEU_ORDER)],
        sys_len=int(meters["_bleu_sys_len"].sum),
        ref_len=int(meters["_bleu_ref_len"].sum),
        smooth_method="exp",
    ).score
    return round(float(np.float64(score)), 2)
