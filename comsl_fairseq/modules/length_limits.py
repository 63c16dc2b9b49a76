"""Every length limit of the built model, checked per row when a manifest is read.

The mBART encoder's learned positions bound each sequence it reads, and the
cross-modality pass reads the longest one, [transcript ; speech]::

    transcript   [src_tag] x1..xn </s>                       len(src) positions
    speech       [src_tag] + adapter frames                  1 + frames(n_samples)
    frames       samples --hop 160--> mel --Whisper s2--> --adapter s2, s2-->  (12.5 per second)

``max_text_tokens`` bounds the transcript alone, so a 702-token transcript with a 30 s clip
(702 + 1 + 375 > 1024) passed and stopped training with ``IndexError: index out of range in
self`` in the position lookup, naming no row. The decoder reads the translation (ST, MT) and
the transcript (ASR branches), bounded by its own positions; Whisper reads at most its
window. A row over any limit is skipped and named with the limit it exceeds.
"""
from dataclasses import dataclass

import torch
from whisper.audio import SAMPLE_RATE

from comsl_fairseq.modules.lengths import speech_lengths


@dataclass(frozen=True)
class LengthLimits:
    """Longest inputs a built composite model takes."""

    encoder_positions: int  # mBART encoder: text, speech and [text ; speech] sequences
    decoder_positions: int  # mBART decoder: translation and transcript decoder inputs
    whisper_samples: int | None  # Whisper's window, in 16 kHz samples (None: a text-only model)
    pad_samples: int = 0  # > 0: every clip is padded or cut to this many samples (--whisper-pad-seconds)
    trailing_samples: int = 0  # silence appended to every clip (--whisper-trailing-silence)

    @classmethod
    def of_model(cls, model) -> "LengthLimits | None":
        """The limits of a whisper_mbart_composite model (None for any other model)."""
        encoder = getattr(model, "encoder", None)
        if encoder is None or not hasattr(encoder, "mbart") or not hasattr(encoder, "whisper"):
            return None
        window = encoder.max_positions()  # None for the text-only model (no Whisper)
        return cls(encoder_positions=int(encoder.mbart.max_positions()),
                   decoder_positions=int(model.decoder.max_positions()),
                   whisper_samples=None if window is None else int(window),
                   pad_samples=int(round(getattr(encoder, "pad_seconds", 0.0) * SAMPLE_RATE)),
                   trailing_samples=int(round(getattr(encoder, "trailing_silence", 0.0) * SAMPLE_RATE)))

    def speech_positions(self, n_samples: int) -> int:
        """Encoder positions taken by a clip: its tag plus the adapter frames."""
        if self.pad_samples > 0:
            n = min(self.pad_samples, self.whisper_samples)
        else:
            n = min(n_samples + self.trailing_samples, self.whisper_samples)
        return 1 + int(speech_lengths(torch.tensor([n]))["adapter"][0])

    def problem(self, n_samples: int, src_len: int, tgt_len: int, text_only: bool = False) -> str | None:
        """Why a row does not fit (None when it does). ``src_len``/``tgt_len`` count the
        tokenized transcript and translation, tag and </s> included."""
        limits = [(tgt_len, self.decoder_positions, "translation tokens > decoder positions"),
                  (src_len, self.decoder_positions, "transcript tokens > decoder positions (ASR branches)"),
                  (src_len, self.encoder_positions, "transcript tokens > encoder positions (MT branch)")]
        if not text_only and self.whisper_samples is not None:
            speech = self.speech_positions(n_samples)
            limits += [
                (n_samples, self.whisper_samples, "audio samples > Whisper's window"),
                (speech, self.encoder_positions, "speech frames + tag > encoder positions"),
                (src_len + speech, self.encoder_positions,
                 f"transcript tokens ({src_len}) + speech frames + tag ({speech}) > encoder positions "
                 "(the cross-modality pass [transcript ; speech])"),
            ]
        for value, limit, what in limits:
            if value > limit:
                return f"{what}: {value} > {limit}"
        return None
