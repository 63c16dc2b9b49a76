"""Length bucketing by audio and text together, the token budget's cost, and padding fractions.

A batch costs its longest clip in the Whisper encoder and its longest transcript and
translation in the mBART passes (each decoder pass, and each output layer, runs on the padded
text). Sorting by audio length alone leaves the text lengths of a batch to chance. With
``bucket_samples`` > 0 the order is: audio length rounded down to a bucket of that many
samples, then the longer of transcript and translation, then audio length, so a batch
holds clips of nearly one length *and* texts of nearly one length.

``--max-tokens`` counts audio samples per utterance (fairseq's raw-audio convention); with
``text_token_samples`` > 0 each text token (of the longer text) also counts as that many
samples, so that a batch of long texts over short clips gets fewer utterances.
"""
import numpy as np


def bucketed_order(n_samples: np.ndarray, text_lengths: np.ndarray, bucket_samples: int,
                   start: np.ndarray | None = None) -> np.ndarray:
    """Indices sorted by (audio bucket, text length, audio length); ``bucket_samples`` 0
    sorts by audio length alone. Ties keep their order in ``start`` (a permutation of the
    indices: a shuffled one breaks them at random; default: index order)."""
    order = np.arange(len(n_samples)) if start is None else np.asarray(start)
    audio = n_samples[order]
    if bucket_samples <= 0:
        return order[np.argsort(audio, kind="stable")]
    keys = (audio, text_lengths[order], audio // bucket_samples)  # np.lexsort: the last key is the primary one
    return order[np.lexsort(keys)]


def token_cost(n_samples: np.ndarray, text_lengths: np.ndarray, text_token_samples: int) -> np.ndarray:
    """What each utterance counts against ``--max-tokens``: its samples, plus
    ``text_token_samples`` per token of its longer text."""
    return n_samples + text_token_samples * text_lengths


def padding_fractions(batches, n_samples: np.ndarray, src_lengths: np.ndarray, tgt_lengths: np.ndarray) -> dict:
    """Share of padding in the batches (lists of indices): 1 - real / (batch size x longest),
    summed over batches, for the audio, the transcripts and the translations."""
    out = {}
    for name, lengths in (("audio", n_samples), ("transcript", src_lengths), ("translation", tgt_lengths)):
        real = padded = 0
        for batch in batches:
            sizes = lengths[np.asarray(batch, dtype=np.int64)]
            if sizes.size:
                real += int(sizes.sum())
                padded += int(sizes.max()) * sizes.size
        out[name] = 1.0 - real / padded if padded else 0.0
    return out
