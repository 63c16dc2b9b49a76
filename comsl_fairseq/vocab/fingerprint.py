"""A fingerprint of the dictionary and SentencePiece model a checkpoint was trained with.

Token ids mean something only together with the ``dict.txt`` (id -> piece) and the
``sentence.bpe.model`` (text -> pieces) they were made with. A ``dict.txt`` of the same
size in another order loads without any shape error and turns every hypothesis into other
words, so the task saves this fingerprint in each checkpoint (``task_state`` for
``--path`` loading, the task's entry of ``extra_state`` for resuming) and refuses to load a
checkpoint whose fingerprint differs from the files in use, naming both.

The dictionary part hashes the symbols in id order (counts do not change ids); the
SentencePiece part hashes the model file. Other tools (e.g. an exported model folder that
carries its own files) call :func:`vocabulary_fingerprint`, :func:`checkpoint_fingerprint`
and :func:`check_vocabulary` directly.
"""
import hashlib
import logging
from pathlib import Path

from fairseq.data import Dictionary

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


def vocabulary_fingerprint(dict_path, sentencepiece_model) -> dict:
    """{"dict_txt": {file, sha256, symbols}, "sentencepiece_model": {file, sha256}}."""
    dict_path, sentencepiece_model = Path(dict_path).resolve(), Path(sentencepiece_model).resolve()
    symbols = Dictionary.load(str(dict_path)).symbols  # fairseq's specials + dict.txt, in id order
    return {
        "dict_txt": {"file": str(dict_path), "symbols": len(symbols),
                     "sha256": hashlib.sha256("\n".join(symbols).encode("utf-8")).hexdigest()},
        "sentencepiece_model": {"file": str(sentencepiece_model), "sha256": _sha256_file(sentencepiece_model)},
    }


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
    if problems:
        raise VocabularyMismatchError(
            "\n".join([f"{what} was trained with other vocabulary files; token ids would decode to other "
                       "words:"] + problems + ["point vocab_filename / bpe_tokenizer.sentencepiece_model of the "
                                               "data config.yaml at the files it was trained with"]))
