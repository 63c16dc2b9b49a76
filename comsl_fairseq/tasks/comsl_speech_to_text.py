"""Task ``comsl_speech_to_text``: speech translation with transcripts.

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
from typing import List

from fairseq import metrics
from fairseq.data.encoders.sentencepiece_bpe import SentencepieceBPE, SentencepieceConfig
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from comsl_fairseq.data.audio import SAMPLE_RATE
from comsl_fairseq.data.config import DataConfig
from comsl_fairseq.data.dataset import SpeechTextDataset
from comsl_fairseq.evaluation.scoring import bleu_tokenizer
from comsl_fairseq.modules.length_limits import LengthLimits
from comsl_fairseq.training import schedule as training_schedule
from comsl_fairseq.training import valid_bleu as vb
from comsl_fairseq.training.arch_check import check_model_family
from comsl_fairseq.training.setup_checks import check_criterion_setup, check_model_setup
from comsl_fairseq.training.stand_in_batch import readable_first_batch
from comsl_fairseq.vocab.fingerprint import KEY as VOCABULARY_KEY
from comsl_fairseq.vocab.fingerprint import check_vocabulary, vocabulary_fingerprint
from comsl_fairseq.vocab.trim import TrimmedDictionary
from comsl_fairseq.vocab.vocabulary import TextTokenizer, build_dictionary, language_tag_ids

logger = logging.getLogger(__name__)


@dataclass
class ComslSpeechToTextConfig(FairseqDataclass):
    data: str = field(default="???", metadata={"help": "folder with the manifests ({split}.tsv) and config.yaml"})
    config_yaml: str = field(default="config.yaml", metadata={"help": "data config, relative to the data folder"})
    eval_bleu: bool = field(default=False, metadata={"help": "decode the validation set and log sacreBLEU as 'bleu'"})
    eval_bleu_beam: int = field(default=5, metadata={"help": "beam size for --eval-bleu"})
    eval_bleu_max_len_b: int = field(default=200, metadata={"help": "maximum hypothesis length for --eval-bleu"})
    eval_bleu_tokenize: str = field(default="13a", metadata={
        "help": "sacreBLEU tokenizer for --eval-bleu; with the default, the per-language BLEU of Chinese and "
                "Japanese targets (--eval-bleu-per-language) is tokenized zh and ja-mecab"})
    eval_bleu_print_samples: bool = field(default=False, metadata={"help": "log one hypothesis per batch"})
    eval_bleu_every_nth: int = field(default=1, metadata={
        "help": "--eval-bleu decodes only the validation utterances whose index is a multiple of N (the "
                "original ComSL: 4); the validation loss still covers all"})
    eval_bleu_per_language: bool = field(default=False, metadata={
        "help": "with --eval-bleu: 'bleu' (the checkpoint metric) is the unweighted mean of the per-language "
                "BLEU, as the original ComSL selects: per source language for rows into English (bleu_fr_XX), "
                "per language pair for other targets (bleu_en_XX-de_DE); the BLEU pooled over all utterances "
                "is logged as bleu_pooled"})
    text_only: bool = field(default=False, metadata={
        "help": "transcript -> translation only (the MT stage): audio is neither checked nor read; use with "
                "--st-weight 0 --asr-weight 0 --cml-weight 0 --ddm-alpha 0"})
    decode_task: ChoiceEnum(["st", "asr", "mt"]) = field(default="st", metadata={
        "help": "what fairseq-generate decodes: st = speech -> translation; asr = speech -> transcript "
                "(references are transcripts); mt = gold transcript -> translation (text path, no audio)"})
    audio_bucket_seconds: float = field(default=0.0, metadata={
        "help": "order utterances by audio length rounded down to buckets of this many seconds, then by text "
                "length (the longer of transcript and translation), so that a batch holds similar clips and "
                "similar texts; 0 = by audio length alone. comsl-preflight prints the padding either way"})
    text_token_samples: int = field(default=0, metadata={
        "help": "--max-tokens counts audio samples; with N > 0 each token of an utterance's longer text also "
                "counts as N samples, so batches of long texts hold fewer utterances (0 = audio only)"})
    fail_on_bad_input: bool = field(default=False, metadata={
        "help": "stop at the first unusable manifest row or clip instead of skipping and counting it"})
    seed: int = II("common.seed")
    # read to measure the training schedule from the epoch iterator (comsl_fairseq.training.schedule)
    train_subset: str = II("dataset.train_subset")
    update_freq: List[int] = II("optimization.update_freq")
    max_epoch: int = II("optimization.max_epoch")
    max_update: int = II("optimization.max_update")
    skip_remainder_batch: bool = II("optimization.skip_remainder_batch")


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
        self.length_limits = None  # of the last model built: rows over them are skipped when read
        self.vocabulary = vocabulary_fingerprint(data_cfg.vocab_filename, data_cfg.sentencepiece_model, dictionary)
        self.schedule = None  # measured from the training epoch iterator
        self._schedule_logged = False
        self.sequence_generator = None
        self.bpe = self.build_bpe()
        self.valid_langs = []  # BLEU groups of the loaded validation splits: "fr_XX", "en_XX-de_DE" (direction_name)

    @classmethod
    def setup_task(cls, cfg: ComslSpeechToTextConfig, **kwargs):
        if cfg.data in (None, "", "???"):
            raise ValueError("comsl_speech_to_text needs the data folder as first argument")
        if cfg.audio_bucket_seconds < 0 or cfg.text_token_samples < 0:
            raise ValueError(f"--audio-bucket-seconds and --text-token-samples must be >= 0, got "
                             f"{cfg.audio_bucket_seconds} and {cfg.text_token_samples}")
        config_path = Path(cfg.config_yaml)
        if not config_path.is_absolute():
            config_path = Path(cfg.data) / config_path
        data_cfg = DataConfig.load(config_path)
        dictionary, n_pretrained = build_dictionary(data_cfg.vocab_filename, data_cfg.trim_vocab)
        if isinstance(dictionary, TrimmedDictionary):
            logger.info("dictionary: %d of %d symbols (trim_vocab %s: its pieces, specials and all language tags)",
                        len(dictionary), dictionary.full_size, data_cfg.trim_vocab)
        else:
            logger.info("dictionary: %d symbols (%s + tags + <mask> = %d pretrained rows, + %d added tags)",
                        len(dictionary), data_cfg.vocab_filename.name, n_pretrained,
                        len(dictionary) - n_pretrained)
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
            length_limits=self.length_limits, bucket_samples=int(self.cfg.audio_bucket_seconds * SAMPLE_RATE),
            text_token_samples=self.cfg.text_token_samples,
        )
        if not split.startswith("train"):
            ds = self.datasets[split]
            langs = {self.direction_name(src, tgt[0]) for src, tgt in zip(ds.src_lang, ds.tgt_text, strict=True)}
            self.valid_langs = sorted(set(self.valid_langs) | langs)

    def lang_name(self, tag_id) -> str:
        """Language tag id -> its name in logs and metric keys, e.g. ``fr_XX``."""
        return self.tgt_dict[int(tag_id)].strip("[]")

    def direction_name(self, src_tag_id, tgt_tag_id) -> str:
        """The validation BLEU group of a row: its source language when it translates into
        English (``fr_XX``), else its pair (``en_XX-de_DE``), so that En->X and both-direction
        models are selected by the mean over what they translate."""
        src, tgt = self.lang_name(src_tag_id), self.lang_name(tgt_tag_id)
        return src if tgt == "en_XX" else f"{src}-{tgt}"

    def get_batch_iterator(self, dataset, max_sentences=None, num_shards=1, epoch=1, **kwargs):
        """fairseq's iterator, with a stand-in for empty batches that is always readable; for the
        training set, also measure the schedule it implies."""
        epoch_itr = super().get_batch_iterator(dataset, max_sentences=max_sentences, num_shards=num_shards,
                                               epoch=epoch, **kwargs)
        if dataset is self.datasets.get(self.cfg.train_subset):
            freqs = list(self.cfg.update_freq)
            self.schedule = training_schedule.MeasuredSchedule(
                world_size=num_shards, batches_per_epoch=len(epoch_itr), batch_size=max_sentences,
                update_freq=freqs[min(epoch, len(freqs)) - 1], skip_remainder_batch=self.cfg.skip_remainder_batch,
                max_epoch=self.cfg.max_epoch, max_update=self.cfg.max_update)
            training_schedule.publish(self.schedule)
        return readable_first_batch(epoch_itr)

    def begin_epoch(self, epoch, model):
        """Whisper's epoch-based freeze is decided here, at every epoch begin (resumes included);
        the first epoch this process trains also logs the measured schedule."""
        if hasattr(model, "set_epoch"):
            model.set_epoch(epoch)
        if not self._schedule_logged and self.schedule is not None:
            self._schedule_logged = True
            enc = getattr(model, "encoder", None)
            logger.info(self.schedule.describe(getattr(enc, "freeze_whisper_updates", 0),
                                               getattr(enc, "freeze_whisper_epochs", 0)))

    @property
    def source_dictionary(self):
        return None  # the source is audio

    @property
    def target_dictionary(self):
        return self.tgt_dict

    def max_positions(self):
        return int(self.data_cfg.max_audio_seconds * SAMPLE_RATE), self.data_cfg.max_text_tokens

    # --------------------------------------- vocabulary fingerprint in checkpoints
    def state_dict(self):
        """Saved as the checkpoint's ``task_state``; read back by ``--path`` loading."""
        return {**super().state_dict(), VOCABULARY_KEY: self.vocabulary}

    def load_state_dict(self, state_dict):
        check_vocabulary(state_dict.get(VOCABULARY_KEY), self.vocabulary)
        super().load_state_dict({k: v for k, v in state_dict.items() if k != VOCABULARY_KEY})

    def get_checkpoint_dict(self):
        """Saved in the checkpoint's ``extra_state``; fairseq hands it back when resuming."""
        return {type(self).__name__: {VOCABULARY_KEY: self.vocabulary}}

    def set_checkpoint_dict(self, state):
        check_vocabulary(state.get(VOCABULARY_KEY), self.vocabulary, "the checkpoint resumed from")

    # ----------------------------------------------------------------- model
    def build_model(self, cfg, from_checkpoint=False):
        check_model_family(cfg)
        if not from_checkpoint:
            check_model_setup(cfg)
        model = super().build_model(cfg, from_checkpoint)
        self.length_limits = LengthLimits.of_model(model) or self.length_limits
        if self.cfg.eval_bleu_every_nth < 1:
            raise ValueError(f"--eval-bleu-every-nth must be >= 1, got {self.cfg.eval_bleu_every_nth}")
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
            self.add_bleu_stats(logging_output, model, sample)
        return loss, sample_size, logging_output

    def add_bleu_stats(self, logging_output: dict, model, sample) -> None:
        """Decode this batch's every-nth utterances; add their BLEU statistics, pooled and
        (with --eval-bleu-per-language) per language (:meth:`direction_name`), zeros for absent ones."""
        keep = sample["id"] % self.cfg.eval_bleu_every_nth == 0  # B
        hyps, refs, langs = [], [], []
        if bool(keep.any()):
            picked = vb.select_rows(sample, keep) if not bool(keep.all()) else sample
            hyps, refs = self.translate_batch(model, picked)
            langs = [self.direction_name(s, t) for s, t in zip(picked["net_input"]["src_lang_tags"].tolist(),
                                                                picked["target"][:, 0].tolist(), strict=True)]
            if self.cfg.eval_bleu_print_samples:
                logger.info("example hypothesis: %s", hyps[0])
                logger.info("example reference:  %s", refs[0])
        tokenize = self.cfg.eval_bleu_tokenize
        vb.add_stats(logging_output, vb.POOLED, vb.bleu_stats(hyps, refs, tokenize))
        if self.cfg.eval_bleu_per_language:
            for lang in self.valid_langs:
                rows = [i for i, x in enumerate(langs) if x == lang]
                stats = vb.bleu_stats([hyps[i] for i in rows], [refs[i] for i in rows], self.group_tokenizer(lang))
                vb.add_stats(logging_output, lang, stats)

    def group_tokenizer(self, group: str) -> str:
        """sacreBLEU tokenizer of one validation BLEU group (:meth:`direction_name`): --eval-bleu-tokenize,
        except that the default 13a follows the group's target language (zh, ja-mecab)."""
        if self.cfg.eval_bleu_tokenize != "13a":
            return self.cfg.eval_bleu_tokenize
        return bleu_tokenizer(group.split("-")[-1] if "-" in group else None)

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

        vb.log_meters(logging_outputs, vb.POOLED)
        pooled = "bleu"
        if self.cfg.eval_bleu_per_language:
            langs = list(self.valid_langs)
            for lang in langs:
                vb.log_meters(logging_outputs, lang)
                metrics.log_derived(f"bleu_{lang}", lambda m, lang=lang: vb.bleu_from_meters(m, lang) or 0.0)
            metrics.log_derived("bleu", lambda m: vb.mean_language_bleu(m, langs))
            pooled = "bleu_pooled"
        metrics.log_derived(pooled, lambda m: vb.bleu_from_meters(m) or 0.0)
