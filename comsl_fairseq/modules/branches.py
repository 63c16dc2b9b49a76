"""The routing table of ComSL's decoder passes: which encoder output feeds which decoder input.

The routing table of ComSL's decoder passes (paper §3): which mBART-encoder
output feeds which decoder input. The model routes by it, the criterion asks for its
rows by name; nothing else lists branches.

    st      H_s   -> translation      asr     H_s   -> transcript
    mt      H_x   -> translation      stm_st  H_c^s -> translation
    stm_asr H_c^s -> transcript       mtp     H_c^x -> transcript
    ctc     H_s frame-wise through the output projection (our optional auxiliary loss)
"""
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# encoder outputs
SPEECH = "speech"  # H_s: [src tag ; adapter output] through the mBART encoder
TEXT = "text"  # H_x: the transcript through the mBART encoder
CONCAT_SPEECH = "concat_speech"  # H_c^s: speech part of the [masked transcript ; speech] pass
CONCAT_TEXT = "concat_text"  # H_c^x: its text part
ENCODER_OUTPUTS = (SPEECH, TEXT, CONCAT_SPEECH, CONCAT_TEXT)

# decoder inputs
TRANSLATION = "translation"  # prev_output_tokens: </s> [tgt_tag] y1..ym
TRANSCRIPT = "transcript"  # prev_transcript_tokens: </s> [src_tag] x1..xn
FRAMES = "frames"  # no decoder: the encoder frames through the tied output projection (CTC)


@dataclass(frozen=True)
class Branch:
    """One pass of the shared decoder: the encoder output it attends to, the input it reads."""

    encoder_output: str
    decoder_input: str

    def __post_init__(self):
        if self.encoder_output not in ENCODER_OUTPUTS or self.decoder_input not in (TRANSLATION, TRANSCRIPT, FRAMES):
            raise ValueError(f"not a branch: {self}; encoder outputs {ENCODER_OUTPUTS}, "
                             f"decoder inputs {(TRANSLATION, TRANSCRIPT, FRAMES)}")


BRANCHES = {
    "st": Branch(SPEECH, TRANSLATION),
    "asr": Branch(SPEECH, TRANSCRIPT),
    "mt": Branch(TEXT, TRANSLATION),
    "stm_st": Branch(CONCAT_SPEECH, TRANSLATION),
    "stm_asr": Branch(CONCAT_SPEECH, TRANSCRIPT),
    "mtp": Branch(CONCAT_TEXT, TRANSCRIPT),
    "ctc": Branch(SPEECH, FRAMES),
}


def branch_table(branches: Iterable[str] | Mapping[str, Branch]) -> dict:
    """{name: Branch} for names of :data:`BRANCHES`, or a mapping given as is (a caller may
    route a pass of its own, e.g. the benchmark's copy of the original's unused pass)."""
    if isinstance(branches, Mapping):
        return dict(branches)
    unknown = [b for b in branches if b not in BRANCHES]
    if unknown:
        raise ValueError(f"unknown branches {unknown}; known: {tuple(BRANCHES)}")
    return {name: BRANCHES[name] for name in branches}
