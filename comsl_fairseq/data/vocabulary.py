"""The mBART-50 dictionary with ComSL's extra tags, and SentencePiece text encoding.

Row layout (SPEC §7): fairseq's 4 specials, ``dict.txt`` as shipped, the 52 ML50 tags
in ML50 order, ``<mask>`` -- together the mBART-50 checkpoint's embedding rows -- then
``[cy_GB]`` and ``[ca_ES]``, which the model adds as new embedding rows.
"""
from pathlib import Path

import sentencepiece as spm
import torch
from fairseq.data import Dictionary

from comsl_fairseq.data.languages import EXTRA_TAGS, MASK_SYMBOL, ML50_TAGS, tag_symbol


class VocabularyError(ValueError):
    """A dict.txt or SentencePiece model that does not fit the mBART-50 layout."""


def build_dictionary(dict_path) -> tuple:
    """Load ``dict.txt`` and append the tags and ``<mask>``.

    Returns (dictionary, n_pretrained_rows): the second number is the row count an
    mBART-50 checkpoint built on this dict.txt has (everything before the extra tags).
    """
    dict_path = Path(dict_path)
    d = Dictionary.load(str(dict_path))
    tags = [tag_symbol(t) for t in ML50_TAGS]
    present = [s for s in tags + [MASK_SYMBOL] + [tag_symbol(t) for t in EXTRA_TAGS] if s in d.indices]
    if present:
        raise VocabularyError(
            f"{dict_path} already contains {present[:5]}{'...' if len(present) > 5 else ''}; "
            "vocab_filename must be mBART-50's dict.txt as shipped, without language tags"
        )
    for s in tags:
        d.add_symbol(s)
    d.add_symbol(MASK_SYMBOL)
    n_pretrained = len(d)
    for t in EXTRA_TAGS:
        d.add_symbol(tag_symbol(t))
    return d, n_pretrained


def language_tag_ids(dictionary: Dictionary) -> set:
    """Indices of every language tag in the dictionary (stripped from all outputs)."""
    return {dictionary.index(tag_symbol(t)) for t in ML50_TAGS + list(EXTRA_TAGS)}


class TextTokenizer:
    """Text -> ``[tag] pieces </s>`` token ids (SPEC §3), one convention everywhere."""

    def __init__(self, sentencepiece_model, dictionary: Dictionary):
        self.path = Path(sentencepiece_model)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.dictionary = dictionary

    def encode(self, text: str, tag: str) -> torch.Tensor:
        pieces = self.sp.encode(text, out_type=str)
        ids = [self.dictionary.index(tag_symbol(tag))]
        ids += [self.dictionary.index(p) for p in pieces]
        ids.append(self.dictionary.eos())
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids) -> str:
        """Token ids (tags and specials already removed) -> detokenized text."""
        pieces = [self.dictionary[i] for i in ids]
        return "".join(pieces).replace("\u2581", " ").strip()
