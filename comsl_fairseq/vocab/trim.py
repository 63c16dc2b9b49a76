"""Vocabulary trimming: keep only the rows of mBART-50's 250,054 that the training text uses.

The target side of X->En and the transcripts use a small part of mBART-50's SentencePiece
vocabulary, yet the output layer computes every row on each decoder pass. A *keep file*
(one piece per line, written by ``comsl-trim-vocab`` from the training manifests) lists the
pieces to keep; the data config's ``trim_vocab`` key names it. The task then builds a
:class:`TrimmedDictionary`: fairseq's specials, the kept pieces in ``dict.txt`` order, every
language tag and ``<mask>``. Its ``full_ids`` map each row to the row of the full dictionary,
which is how the pretrained embeddings are sliced and how ids are mapped back. Every
symbol keeps its spelling, so the text fairseq-generate and the Python API print is the
text the full vocabulary gives for the same pieces.

Text is segmented with SentencePiece restricted to the kept pieces (the others are marked
unused in a copy of the model, as SentencePiece's own vocabulary restriction does): a word the
training text never had is spelt with kept pieces rather than becoming ``<unk>``, as long as
its characters occur in the training text (the keep file holds the single-character piece of
every character seen).
"""
import hashlib
from pathlib import Path

import torch
from fairseq.data import Dictionary

from comsl_fairseq.vocab.languages import EXTRA_TAGS, MASK_SYMBOL, ML50_TAGS, tag_symbol

WORD_BOUNDARY = "\u2581"  # SentencePiece's word-start mark


class TrimError(ValueError):
    """A keep file that does not fit the dictionary; the message names the file and line."""


class TrimmedDictionary(Dictionary):
    """A fairseq dictionary holding a subset of a full one's rows, in the full one's order.

    ``full_ids[i]`` is the full dictionary's id of row ``i``; ``full_size`` the full
    dictionary's length; ``keep_file`` the keep file it was built from."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.full_ids = torch.arange(self.nspecial)
        self.full_size = 0
        self.keep_file = None

    def to_full(self, ids) -> torch.Tensor:
        """Trimmed ids (any shape) -> the full dictionary's ids."""
        return self.full_ids[torch.as_tensor(ids, dtype=torch.long)]

    def kept_pieces(self) -> list:
        """The SentencePiece pieces among the rows (not the specials, tags or ``<mask>``)."""
        always = set(always_kept_symbols())
        return [s for s in self.symbols[self.nspecial:] if s not in always]

    def mapping_sha256(self) -> str:
        """A hash of the row mapping: two trimmed dictionaries with equal hashes hold the same rows."""
        return hashlib.sha256(",".join(map(str, self.full_ids.tolist())).encode()).hexdigest()


def always_kept_symbols() -> list:
    """Rows every trimmed dictionary keeps besides fairseq's specials: the tags and ``<mask>``."""
    return [tag_symbol(t) for t in ML50_TAGS] + [MASK_SYMBOL] + [tag_symbol(t) for t in EXTRA_TAGS]


def read_keep_file(path) -> list:
    """The pieces of a keep file, one per line (blank lines ignored)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise TrimError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    pieces = [line.strip() for line in lines if line.strip()]
    if not pieces:
        raise TrimError(f"{path} lists no pieces; write it with comsl-trim-vocab")
    return pieces


def trim_dictionary(full: Dictionary, keep_path) -> TrimmedDictionary:
    """The rows of ``full`` (our dictionary: dict.txt + tags + <mask> + added tags) whose
    symbols the keep file lists, plus the specials, tags and ``<mask>``, in ``full``'s order."""
    pieces = read_keep_file(keep_path)
    unknown = [p for p in pieces if p not in full.indices]
    if unknown:
        raise TrimError(f"{keep_path}: {len(unknown)} piece(s) are not in the dictionary, e.g. {unknown[:5]}; "
                        "the keep file was written for another dict.txt (write it again with comsl-trim-vocab)")
    keep = set(pieces) | set(always_kept_symbols())
    trimmed = TrimmedDictionary(bos=full.bos_word, pad=full.pad_word, eos=full.eos_word, unk=full.unk_word)
    if trimmed.symbols != full.symbols[:full.nspecial]:
        raise TrimError(f"{keep_path}: the dictionary's special symbols differ from fairseq's defaults")
    ids = list(range(full.nspecial))
    for i in range(full.nspecial, len(full)):
        if full[i] in keep:
            trimmed.add_symbol(full[i], n=full.count[i])
            ids.append(i)
    trimmed.full_ids = torch.tensor(ids, dtype=torch.long)
    trimmed.full_size = len(full)
    trimmed.keep_file = str(Path(keep_path).resolve())
    return trimmed


def pieces_to_keep(sp, dictionary: Dictionary, texts) -> list:
    """The pieces of ``dictionary`` that segmenting ``texts`` with ``sp`` uses, plus the
    word-start piece and the single-character piece of every character they contain, so that
    other text written with those characters segments into kept pieces. In dictionary order."""
    used = set()
    chars = set()
    for text in texts:
        used.update(sp.encode(text, out_type=str))
        chars.update(text)
    chars.discard(" ")
    used.add(WORD_BOUNDARY)
    used.update(chars)
    skip = set(always_kept_symbols())
    return [s for s in dictionary.symbols[dictionary.nspecial:] if s in used and s not in skip]


def restrict_sentencepiece(sp, pieces):
    """A copy of the SentencePiece model ``sp`` that segments with ``pieces`` only: every other
    normal piece is marked unused, which its encoder skips (control and unknown pieces stay)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    keep = set(pieces)
    normal, unused = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL, \
        sentencepiece_model_pb2.ModelProto.SentencePiece.UNUSED
    for piece in proto.pieces:
        if piece.type == normal and piece.piece not in keep:
            piece.type = unused
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def write_keep_file(path, pieces) -> None:
    """One piece per line (SentencePiece pieces hold no whitespace)."""
    Path(path).write_text("".join(f"{p}\n" for p in pieces), encoding="utf-8")


def fingerprint(dictionary: Dictionary) -> dict | None:
    """The trim part of a vocabulary fingerprint (None for a full dictionary): the keep file,
    the row count and the mapping itself (trimmed id -> full id), saved in every checkpoint."""
    if not isinstance(dictionary, TrimmedDictionary):
        return None
    return {"file": dictionary.keep_file, "rows": len(dictionary), "full_rows": dictionary.full_size,
            "sha256": dictionary.mapping_sha256(), "full_ids": dictionary.full_ids.tolist()}
