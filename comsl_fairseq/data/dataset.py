"""Dataset of (audio, transcript, translation) triples for ComSL training and decoding.

Every batch carries all three (the multi-task objective needs them):

    net_input.src_tokens            B x S  float  waveform at 16 kHz, zero-padded
    net_input.src_lengths           B      long   samples per clip
    net_input.src_lang_tags         B      long   [src_tag] id (prepended to speech)
    net_input.src_text_tokens       B x Tx long   [src_tag] x1..xn </s>   (MT encoder input)
    net_input.src_text_lengths      B
    net_input.prev_output_tokens    B x Ty long   </s> [tgt_tag] y1..ym   (ST / MT decoder input)
    net_input.prev_transcript_tokens B x Tx long  </s> [src_tag] x1..xn   (ASR decoder input)
    target                          B x Ty long   [tgt_tag] y1..ym </s>
    transcript                      B x Tx long   [src_tag] x1..xn </s>
    utt_id                          B      str    manifest ids (``id`` holds dataset indices)

The waveform (not features) is batched: the model computes Whisper's log-mel itself,
per clip, on the training device. It is keyed ``src_tokens`` because fairseq's
sequence generator takes batch size and source length from that key.
"""
import logging
from pathlib import Path

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils

from comsl_fairseq.data import batching
from comsl_fairseq.data.audio import SAMPLE_RATE, AudioError, read_audio, resolve_audio_path
from comsl_fairseq.data.clip_lengths import MIN_CLIP_SAMPLES, UNITS_HINT, header_samples, length_mismatch
from comsl_fairseq.data.manifest import SkipLog, read_manifest
from comsl_fairseq.vocab.languages import tag_symbol

logger = logging.getLogger(__name__)


class SpeechTextDataset(FairseqDataset):
    """Rows of one or more manifests, tokenized up front, audio read on access."""

    def __init__(self, split, rows, audio_root: Path, dictionary, src_text, tgt_text, shuffle=True,
                 max_samples: int | None = None, min_samples: int = 0, fail_on_bad_input: bool = False,
                 text_only: bool = False, decode_task: str = "st", bucket_samples: int = 0,
                 text_token_samples: int = 0):
        """``rows``: :class:`ManifestRow` list; ``src_text``/``tgt_text``: their token tensors.
        ``bucket_samples`` / ``text_token_samples``: see :mod:`comsl_fairseq.data.batching`.

        A clip that turns out unusable when read (undecodable, empty, NaN samples, longer or
        shorter than the limits) is skipped -- named in the log and counted -- or, with
        ``fail_on_bad_input``, raises an error naming the utterance.
        """
        self.split = split
        self.max_samples, self.min_samples = max_samples, min_samples
        self.fail_on_bad_input = fail_on_bad_input
        self.text_only = text_only  # MT stage / MT decoding: no audio is read
        self.decode_task = decode_task  # what "target" (and the generator's source) means, see collater
        self.read_skips = SkipLog(split)  # per process: each data-loader worker counts its own
        self._noted = set()
        self.rows = rows
        self.audio_root = audio_root
        self.dictionary = dictionary
        self.shuffle = shuffle
        self.src_text = src_text
        self.tgt_text = tgt_text
        self.src_lang = [dictionary.index(tag_symbol(r.src_tag)) for r in rows]
        self.n_samples = np.array([r.n_samples for r in rows], dtype=np.int64)
        self.tgt_sizes = np.array([len(t) for t in tgt_text], dtype=np.int64)
        self.src_sizes = np.array([len(t) for t in src_text], dtype=np.int64)
        self.bucket_samples = bucket_samples
        text = np.maximum(self.src_sizes, self.tgt_sizes)
        self.cost = batching.token_cost(self.n_samples, text, text_token_samples)
        self.skipped = {}

    @classmethod
    def from_manifests(cls, split, manifest_paths, data_cfg, dictionary, tokenizer, shuffle,
                       fail_on_bad_input: bool = False, text_only: bool = False, decode_task: str = "st",
                       length_limits=None, bucket_samples: int = 0, text_token_samples: int = 0):
        """Read and tokenize manifests; rows that cannot be used are skipped, named and counted
        (or, with ``fail_on_bad_input``, the first one is an error). ``length_limits``
        (:class:`~comsl_fairseq.modules.length_limits.LengthLimits` of the built model, if any)
        skips rows longer than some input of the model can be."""
        skips = SkipLog(split, fatal=fail_on_bad_input)
        rows = []
        for path in manifest_paths:
            rows += read_manifest(path, skips)
        max_samples = int(data_cfg.max_audio_seconds * SAMPLE_RATE)
        min_samples = max(int(data_cfg.min_audio_seconds * SAMPLE_RATE), MIN_CLIP_SAMPLES)
        existing = {}
        kept, src_text, tgt_text = [], [], []
        for r in rows:
            if text_only:
                pass  # the audio is never read: no length or existence checks
            elif r.n_samples > max_samples:
                skips.skip(r.id, "audio too long", f"{r.n_samples / SAMPLE_RATE:.1f} s > max_audio_seconds "
                           f"{data_cfg.max_audio_seconds:g} of {data_cfg.path.name}")
                continue
            elif r.n_samples < min_samples:
                skips.skip(r.id, "audio too short", _too_short(r, min_samples, data_cfg.audio_root))
                continue
            else:
                path = resolve_audio_path(r.audio, data_cfg.audio_root)[0]
                if path not in existing:
                    existing[path] = path.is_file()
                if not existing[path]:
                    skips.skip(r.id, "audio file missing", str(path))
                    continue
            src, tgt = tokenizer.encode(r.src_text, r.src_tag), tokenizer.encode(r.tgt_text, r.tgt_tag)
            if max(len(src), len(tgt)) > data_cfg.max_text_tokens:
                skips.skip(r.id, "text too long", f"{len(src)}/{len(tgt)} tokens > max_text_tokens "
                           f"{data_cfg.max_text_tokens}")
                continue
            problem = length_limits.problem(r.n_samples, len(src), len(tgt), text_only) if length_limits else None
            if problem:
                skips.skip(r.id, "too long for the model", problem)
                continue
            kept.append(r)
            src_text.append(src)
            tgt_text.append(tgt)
        logger.info(skips.summary(len(kept)))
        if not kept:
            hint = f"; {UNITS_HINT}" if skips.counts["audio too short"] + skips.counts["audio too long"] else ""
            raise ValueError(f"split {split!r}: no usable rows in {[str(p) for p in manifest_paths]}"
                             f" ({skips.summary(0)}){hint}")
        ds = cls(split, kept, data_cfg.audio_root, dictionary, src_text, tgt_text, shuffle,
                 max_samples=max_samples, min_samples=min_samples, fail_on_bad_input=fail_on_bad_input,
                 text_only=text_only, decode_task=decode_task, bucket_samples=bucket_samples,
                 text_token_samples=text_token_samples)
        ds.skipped = dict(skips.counts)
        return ds

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = self.rows[index]
        if self.text_only:
            return {"index": index, "utt_id": row.id, "audio": torch.zeros(1), "src_text": self.src_text[index],
                    "tgt_text": self.tgt_text[index], "src_lang": self.src_lang[index]}
        try:
            wav, notes = read_audio(row.audio, self.audio_root)
            if self.max_samples is not None and wav.size > self.max_samples:
                raise AudioError(f"{wav.size / SAMPLE_RATE:.1f} s read, over the limit of "
                                 f"{self.max_samples / SAMPLE_RATE:g} s (manifest n_frames={row.n_samples})",
                                 "audio too long")
            if wav.size < max(self.min_samples, MIN_CLIP_SAMPLES):
                raise AudioError(f"{wav.size} samples read, under {max(self.min_samples, MIN_CLIP_SAMPLES)} "
                                 "(min_audio_seconds, and at least one 10 ms log-mel frame)", "audio too short")
            mismatch = length_mismatch(row.n_samples, wav.size)
            if mismatch:  # batching and --max-tokens counted n_frames: this clip would break them
                raise AudioError(f"{mismatch} (n_frames must count samples at 16 kHz)", "n_frames mismatch")
        except AudioError as e:
            if self.fail_on_bad_input:
                raise AudioError(f"utterance {row.id} of split {self.split}: {e}") from None
            self.read_skips.skip(row.id, e.reason, str(e))
            return None
        for note in notes:  # conversions are fine; say so once per kind, not once per clip
            kind = note.split(" ")[0]
            if kind not in self._noted:
                self._noted.add(kind)
                logger.info("%s: %s %s (first such clip; others are converted the same way silently)",
                            self.split, row.id, note)
        return {
            "index": index,
            "utt_id": row.id,
            "audio": torch.from_numpy(wav),
            "src_text": self.src_text[index],
            "tgt_text": self.tgt_text[index],
            "src_lang": self.src_lang[index],
        }

    def collater(self, samples):
        samples = [s for s in samples if s is not None]  # clips skipped when read
        if len(samples) == 0:
            return {}
        pad, eos = self.dictionary.pad(), self.dictionary.eos()
        lengths = torch.tensor([s["audio"].numel() for s in samples], dtype=torch.long)
        audio = torch.zeros(len(samples), int(lengths.max()))  # B x S
        for i, s in enumerate(samples):
            audio[i, : lengths[i]] = s["audio"]
        src_text = [s["src_text"] for s in samples]
        tgt_text = [s["tgt_text"] for s in samples]
        target = data_utils.collate_tokens(tgt_text, pad, eos)
        transcript = data_utils.collate_tokens(src_text, pad, eos)
        tgt_lengths = torch.tensor([len(t) for t in tgt_text], dtype=torch.long)
        src_text_lengths = torch.tensor([len(t) for t in src_text], dtype=torch.long)
        batch = {
            "id": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "utt_id": [s["utt_id"] for s in samples],
            "nsentences": len(samples),
            "ntokens": int(tgt_lengths.sum()),
            "net_input": {
                "src_tokens": audio,
                "src_lengths": lengths,
                "src_lang_tags": torch.tensor([s["src_lang"] for s in samples], dtype=torch.long),
                "src_text_tokens": transcript,
                "src_text_lengths": src_text_lengths,
                "prev_output_tokens": data_utils.collate_tokens(tgt_text, pad, eos, move_eos_to_beginning=True),
                "prev_transcript_tokens": data_utils.collate_tokens(src_text, pad, eos, move_eos_to_beginning=True),
            },
            "target": target,
            "target_lengths": tgt_lengths,
            "transcript": transcript,
            "transcript_lengths": src_text_lengths,
        }
        return self._for_decode_task(batch)

    def stand_in_batch(self) -> dict:
        """A batch of the shortest clip that can be read: fairseq's stand-in for batches whose
        clips all failed (see :mod:`comsl_fairseq.training.stand_in_batch`); its loss is ignored."""
        for index in np.argsort(self.n_samples, kind="stable"):
            sample = self[int(index)]
            if sample is not None:
                logger.warning("%s: every clip of the first batch is unreadable; %s stands in for empty "
                               "batches (its loss is ignored)", self.split, self.rows[index].id)
                return self.collater([sample])
        raise ValueError(f"split {self.split!r}: no clip can be read ({self.read_skips.summary(0)})")

    def _for_decode_task(self, batch: dict) -> dict:
        """fairseq-generate decodes ``net_input`` towards ``target``: for --decode-task asr the
        target is the transcript (its tag forced by --prefix-size 1); for mt the source is
        the gold transcript read by the text path."""
        net = batch["net_input"]
        if self.decode_task == "asr":
            batch["target"], batch["target_lengths"] = batch["transcript"], batch["transcript_lengths"]
            batch["ntokens"] = int(batch["transcript_lengths"].sum())
            net["prev_output_tokens"] = net["prev_transcript_tokens"]
        elif self.decode_task == "mt":
            net["src_tokens"], net["src_lengths"] = net["src_text_tokens"], net["src_text_lengths"]
            net["text_input"] = True
        return batch

    def num_tokens(self, index):
        """What the utterance counts against --max-tokens: audio samples (+ text, see batching)."""
        return int(self.cost[index])

    def num_tokens_vec(self, indices):
        return self.cost[indices]

    def size(self, index):
        return int(self.n_samples[index]), int(self.tgt_sizes[index])

    @property
    def sizes(self):
        return self.n_samples

    def ordered_indices(self):
        """Sort by audio length (so batches hold similar lengths), or by audio bucket and then text
        length (``bucket_samples``); random ties when shuffling."""
        order = np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))
        text = np.maximum(self.src_sizes, self.tgt_sizes)
        return batching.bucketed_order(self.n_samples, text, self.bucket_samples, order)

    def padding_fractions(self, batches) -> dict:
        """{"audio", "transcript", "translation"}: the share of padding in these batches."""
        return batching.padding_fractions(batches, self.n_samples, self.src_sizes, self.tgt_sizes)

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        """fairseq's length-based batching, without losing utterances.

        The fairseq fork we install drops the last batch whenever its size is not a
        multiple of ``--required-batch-size-multiple`` (default 8), so validation and
        ``fairseq-generate`` would silently skip up to 7 utterances. Batches are
        consecutive runs of ``indices``; whatever is left over becomes one more batch.
        """
        batches = list(super().batch_by_size(indices, max_tokens, max_sentences, required_batch_size_multiple))
        covered = sum(len(b) for b in batches)
        if covered < len(indices):
            batches.append(np.asarray(indices[covered:], dtype=np.int64))
        return batches

    @property
    def supports_prefetch(self):
        return False


def _too_short(row, min_samples: int, audio_root) -> str:
    """Why a row is too short, with the clip's real length when its header tells it (a
    too-short n_frames is most often another unit than 16 kHz samples)."""
    detail = f"n_frames {row.n_samples} < {min_samples} samples at 16 kHz"
    real = header_samples(row.audio, audio_root)
    if real is not None and length_mismatch(row.n_samples, real):
        detail += f"; {length_mismatch(row.n_samples, real)}"
    return detail
