"""The language pairs a model was trained on: counted from its training manifests, recorded in
an exported model folder, and checked before translating (a model asked for a language it never
saw still writes fluent text -- in some other language, or invented)."""
import logging
from pathlib import Path

from comsl_fairseq.vocab.languages import mbart_tag

logger = logging.getLogger(__name__)


class UnseenLanguageError(ValueError):
    """A language (pair) the model was not trained on; the message lists the known ones."""


def training_pairs(cfg: dict, data=None) -> dict:
    """``{"fr-en": rows, ...}`` over a checkpoint's training manifests (``train_subset`` of its
    cfg, in ``data`` or else the cfg's data folder); {} when a manifest is not there. Lines that
    are not UTF-8 or lack the language columns are not counted."""
    folder = Path(str(data if data is not None else (cfg.get("task") or {}).get("data", "")))
    subsets = str((cfg.get("dataset") or {}).get("train_subset", "train")).replace("+", ",").split(",")
    pairs = {}
    for name in filter(None, (s.strip() for s in subsets)):
        path = folder / f"{name}.tsv"
        if not path.is_file():
            return {}
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            header = f.readline().rstrip("\r\n").split("\t")
            if not {"src_lang", "tgt_lang"} <= set(header):
                return {}
            s, t = header.index("src_lang"), header.index("tgt_lang")
            for line in f:
                fields = line.rstrip("\r\n").split("\t")
                if len(fields) == len(header) and fields[s] and fields[t] and "\ufffd" not in fields[s] + fields[t]:
                    key = f"{fields[s]}-{fields[t]}"
                    pairs[key] = pairs.get(key, 0) + 1
    return dict(sorted(pairs.items()))


def split_pair(key: str) -> tuple:
    """``"zh-CN-en"`` -> ``("zh-CN", "en")``: the split at which both sides are language codes
    (codes may hold a hyphen themselves). Raises ValueError."""
    for i, c in enumerate(key):
        if c == "-":
            try:
                mbart_tag(key[:i]), mbart_tag(key[i + 1:])
            except KeyError:
                continue
            return key[:i], key[i + 1:]
    raise ValueError(f"{key!r} is not a language pair SRC-TGT")


class LanguageCheck:
    """Refuses (or, when ``allow_unseen``, warns once about) languages outside ``pairs``
    (``{"fr-en": rows}``; None or {}: not recorded, then every language is allowed with one warning)."""

    def __init__(self, pairs: dict | None, allow_unseen: bool = False, where: str = "the model"):
        self.where, self.allow_unseen, self.warned = where, allow_unseen, set()
        self.known = sorted(split_pair(k) for k in pairs or {})
        self.tags = {(mbart_tag(s), mbart_tag(t)) for s, t in self.known}

    def describe(self) -> str:
        return ", ".join(f"{s}-{t}" for s, t in self.known)

    def check(self, src: str, tgt: str | None) -> None:
        """``tgt`` None: transcription of ``src`` (any pair with that source). An unknown code
        raises ValueError."""
        try:
            src_tag, tgt_tag = mbart_tag(src), None if tgt is None else mbart_tag(tgt)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        if not self.known:
            self._warn_once(("?",), f"{self.where} does not record the languages it was trained on; "
                                   "translations in untrained languages are not refused")
            return
        if tgt is None:
            ok, what = any(s == src_tag for s, _ in self.tags), f"transcribe {src}"
        else:
            ok, what = (src_tag, tgt_tag) in self.tags, f"translate {src} into {tgt}"
        if ok:
            return
        message = f"{self.where} was not trained to {what}; it knows {self.describe()}"
        if not self.allow_unseen:
            raise UnseenLanguageError(message + " (--allow-unseen-language / allow_unseen_language=True "
                                                "tries anyway)")
        self._warn_once((src, tgt), message + "; translating anyway, expect poor or wrong-language output")

    def _warn_once(self, key: tuple, message: str) -> None:
        if key not in self.warned:
            self.warned.add(key)
            logger.warning("%s", message)
