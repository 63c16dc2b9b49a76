"""The mBART-50 dictionary with ComSL's extra tags, and SentencePiece text encoding.

Row layout: fairseq's 4 specials, ``dict.txt`` as shipped, the 52 ML50 tags
in ML50 order, ``<mask>`` -- together the mBART-50 checkpoint's embedding rows -- then
``[cy_GB]`` and ``[ca_ES]``, which the model adds as new embedding rows. With a keep file
(``trim_vocab``) only a subset of these rows is built (comsl_fairseq/vocab/trim.py).
"""
from pathlib import Path

import sentencepiece as spm
import torch
from fairseq.data import Dictionary

from comsl_fairseq.vocab.languages import EXTRA_TAGS, MASK_SYMBOL, ML50_TAGS, tag_symbol
from comsl_fairseq.vocab.trim import TrimmedDictionary, restrict_sentencepiece, trim_dictionary


class VocabularyError(ValueError):
    """A dict.txt or SentencePiece model that does not fit the mBART-50 layout."""


def build_dictionary(dict_path, keep_path=None) -> tuple:
    """Load ``dict.txt`` and append the tags and ``<mask>``; with ``keep_path`` (a keep file)
    keep only its pieces (a :class:`~comsl_fairseq.vocab.trim.TrimmedDictionary`).

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
    if keep_path is not None:
        d = trim_dictionary(d, keep_path)
    return d, n_pretrained


def load_sentencepiece(path) -> "spm.SentencePieceProcessor":
    """A SentencePiece model; a missing or corrupt file raises ValueError naming it."""
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as e:
        raise ValueError(f"SentencePiece model {path} cannot be read ({str(e).splitlines()[0]}); it must be "
                         "the sentence.bpe.model the dictionary was made with (copy it again)") from None


def write_fairseq_dict(sentencepiece_model, dict_path, texts=()) -> int:
    """Write a fairseq ``dict.txt`` for a SentencePiece model in the mBART-50 layout: every
    piece but the control and unknown ones (``<unk> <s> </s>``), in SentencePiece id order,
    with its count in ``texts`` (0 when none are given). Returns the number of entries."""
    sp = load_sentencepiece(sentencepiece_model)
    counts = {}
    for text in texts:
        for piece in sp.encode(text, out_type=str):
            counts[piece] = counts.get(piece, 0) + 1
    n = 0
    with open(dict_path, "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            if not (sp.is_control(i) or sp.is_unknown(i)):
                f.write(f"{sp.id_to_piece(i)} {counts.get(sp.id_to_piece(i), 0)}\n")
                n += 1
    return n


def train_sentencepiece(texts: list, folder, vocab_size: int) -> None:
    """Train a unigram ``sentence.bpe.model`` on ``texts`` and write its ``dict.txt`` (toy
    corpora and test fixtures; real use takes mBART-50's own files)."""
    folder = Path(folder)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(folder / "sentence.bpe"), vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    (folder / "sentence.bpe.vocab").unlink()
    write_fairseq_dict(folder / "sentence.bpe.model", folder / "dict.txt", texts)


def language_tag_ids(dictionary: Dictionary) -> set:
    """Indices of every language tag in the dictionary (stripped from all outputs)."""
    return {dictionary.index(tag_symbol(t)) for t in ML50_TAGS + list(EXTRA_TAGS)}


class TextTokenizer:
    """Text -> ``[tag] pieces </s>`` token ids, one convention everywhere. With a trimmed
    dictionary, SentencePiece segments with the kept pieces only."""

    def __init__(self, sentencepiece_model, dictionary: Dictionary):
        self.path = Path(sentencepiece_model)
        self.sp = load_sentencepiece(self.path)
        self.dictionary = dictionary
        if isinstance(dictionary, TrimmedDictionary):
            self.sp = restrict_sentencepiece(self.sp, dictionary.kept_pieces())

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
