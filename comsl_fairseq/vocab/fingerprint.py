"""A fingerprint of the dictionary and SentencePiece model a checkpoint was trained with.

Token ids mean something only together with the ``dict.txt`` (id -> piece) and the
``sentence.bpe.model`` (text -> pieces) they were made with. A ``dict.txt`` of the same
size in another order loads without any shape error and turns every hypothesis into other
words, so the task saves this fingerprint in each checkpoint (``task_state`` for
``--path`` loading, the task's entry of ``extra_state`` for resuming) and refuses to load a
checkpoint whose fingerprint differs from the files in use, naming both.

The dictionary part hashes the symbols in id order (counts do not change ids); the
SentencePiece part hashes the model file. A trimmed dictionary (``trim_vocab`` in the data
config) adds a ``trim`` part holding the row mapping itself (trimmed id -> full id), so the
mapping travels in every checkpoint. Other tools (e.g. an exported model folder that
carries its own files) call :func:`vocabulary_fingerprint`, :func:`checkpoint_fingerprint`
and :func:`check_vocabulary` directly.
"""
import hashlib
import logging
from pathlib import Path

from fairseq.data import Dictionary

from comsl_fairseq.vocab import trim

logger = logging.getLogger(__name__)

KEY = "vocabulary"  # under this key in the task's saved state


class VocabularyMismatchError(ValueError):
    """A checkpoint loaded with another dict.txt or SentencePiece model than it was trained with."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def vocabulary_fingerprint(dict_path, sentencepiece_model, dictionary: Dictionary | None = None) -> dict:
    """{"dict_txt": {file, sha256, symbols}, "sentencepiece_model": {file, sha256}}, and
    "trim" (see :func:`comsl_fairseq.vocab.trim.fingerprint`) when ``dictionary`` is trimmed."""
    dict_path, sentencepiece_model = Path(dict_path).resolve(), Path(sentencepiece_model).resolve()
    symbols = Dictionary.load(str(dict_path)).symbols  # fairseq's specials + dict.txt, in id order
    out = {
        "dict_txt": {"file": str(dict_path), "symbols": len(symbols),
                     "sha256": hashlib.sha256("\n".join(symbols).encode("utf-8")).hexdigest()},
        "sentencepiece_model": {"file": str(sentencepiece_model), "sha256": _sha256_file(sentencepiece_model)},
    }
    trimmed = trim.fingerprint(dictionary) if dictionary is not None else None
    if trimmed is not None:
        out["trim"] = trimmed
    return out


def checkpoint_fingerprint(state: dict) -> dict | None:
    """The fingerprint saved in a loaded fairseq checkpoint dict (None if it has none)."""
    found = (state.get("task_state") or {}).get(KEY)
    if found is None:
        for value in (state.get("extra_state") or {}).values():
            if isinstance(value, dict) and KEY in value:
                return value[KEY]
    return found


def check_vocabulary(saved: dict | None, current: dict, what: str = "the checkpoint") -> None:
    """Raise :class:`VocabularyMismatchError` naming both files when ``saved`` (from ``what``)
    and ``current`` differ; a checkpoint without a fingerprint (older) is accepted with a warning."""
    if not saved:
        logger.warning("%s carries no fingerprint of its dict.txt and sentence.bpe.model; make sure %s and "
                       "%s are the files it was trained with", what, current["dict_txt"]["file"],
                       current["sentencepiece_model"]["file"])
        return
    problems = []
    for part, name in (("dict_txt", "dict.txt"), ("sentencepiece_model", "SentencePiece model")):
        old, new = saved[part], current[part]
        if old["sha256"] != new["sha256"]:
            size = f" ({old['symbols']} vs {new['symbols']} symbols)" if "symbols" in old else ""
            problems.append(f"  {name}: trained with {old['file']} (sha256 {old['sha256'][:12]}), "
                            f"now {new['file']} (sha256 {new['sha256'][:12]}){size}")
    old_trim, new_trim = saved.get("trim"), current.get("trim")
    if (old_trim or {}).get("sha256") != (new_trim or {}).get("sha256"):
        def rows(t):
            return f"trim_vocab {t['file']} ({t['rows']} rows)" if t else "the full vocabulary (no trim_vocab)"

        problems.append(f"  rows: trained with {rows(old_trim)}, now {rows(new_trim)}")
    if problems:
        raise VocabularyMismatchError(
            "\n".join([f"{what} was trained with other vocabulary files; token ids would decode to other "
                       "words:"] + problems + ["point vocab_filename / bpe_tokenizer.sentencepiece_model / trim_vocab "
                                               "of the data config.yaml at the files it was trained with"]))
