"""The data ``config.yaml`` that sits beside the manifests.

Every key is read; an unknown key is an error rather than silently ignored (the
original code carried config keys it never read). Relative paths resolve against
the folder of the config file, never against the working directory.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

KNOWN_KEYS = {
    "vocab_filename": "the mBART-50 dict.txt as shipped (without language tags)",
    "bpe_tokenizer": "{bpe: sentencepiece, sentencepiece_model: PATH}",
    "audio_root": "folder that manifest audio paths are relative to (default: this folder)",
    "max_audio_seconds": "longer clips are skipped and counted (default 30, Whisper's window)",
    "min_audio_seconds": "shorter clips are skipped and counted (default 0.1)",
    "max_text_tokens": "rows whose transcript or translation is longer are skipped (default 1024)",
    "trim_vocab": "keep file written by comsl-trim-vocab: the embeddings and output layer hold only its pieces "
                  "(plus specials and language tags); default: all of dict.txt",
}


def read_yaml(path, error=ValueError):
    """A YAML file read with the safe loader; a syntax error or a python tag (which the full
    loader would turn into running code) raises ``error`` naming the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        raise error(f"{path}, line {mark.line + 1 if mark else '?'}: {e.problem} -- tags that build Python "
                    "objects are refused; write plain values") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e}); fix the syntax") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


class DataConfigError(ValueError):
    """A data config.yaml that cannot be used; the message names the file and key."""


class DataConfigNotFound(DataConfigError):
    """No data config.yaml at ``path`` (callers that know how the user names the folder say so)."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


@dataclass
class DataConfig:
    path: Path
    vocab_filename: Path
    sentencepiece_model: Path
    audio_root: Path
    max_audio_seconds: float = 30.0
    min_audio_seconds: float = 0.1
    max_text_tokens: int = 1024
    trim_vocab: Optional[Path] = None

    @classmethod
    def load(cls, path) -> "DataConfig":
        path = Path(path).resolve()
        if not path.is_file():
            raise DataConfigNotFound(
                f"data config {path} not found; pass --config-yaml (relative to the data folder)", path
            )
        raw = read_yaml(path, DataConfigError) or {}
        if not isinstance(raw, dict):
            raise DataConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(KNOWN_KEYS))
        if unknown:
            known = "\n".join(f"  {k}: {v}" for k, v in KNOWN_KEYS.items())
            raise DataConfigError(f"{path}: unknown key(s) {unknown}; known keys:\n{known}")

        def resolve(value, key) -> Path:
            if not isinstance(value, str) or not value:
                raise DataConfigError(f"{path}: {key} must be a path, got {value!r}")
            p = Path(value).expanduser()
            return p if p.is_absolute() else (path.parent / p).resolve()

        def require_file(p: Path, key: str) -> Path:
            if not p.is_file():
                raise DataConfigError(f"{path}: {key} points to {p}, which does not exist")
            return p

        if "vocab_filename" not in raw:
            raise DataConfigError(f"{path}: vocab_filename (the mBART-50 dict.txt) is required")
        bpe = raw.get("bpe_tokenizer")
        if not isinstance(bpe, dict) or bpe.get("bpe") != "sentencepiece" or "sentencepiece_model" not in bpe:
            raise DataConfigError(
                f"{path}: bpe_tokenizer must be {{bpe: sentencepiece, sentencepiece_model: PATH}}, got {bpe!r}"
            )
        extra = sorted(set(bpe) - {"bpe", "sentencepiece_model"})
        if extra:
            raise DataConfigError(f"{path}: unknown key(s) under bpe_tokenizer: {extra}")
        audio_root = resolve(raw["audio_root"], "audio_root") if "audio_root" in raw else path.parent
        if not audio_root.is_dir():
            raise DataConfigError(f"{path}: audio_root {audio_root} is not a folder")
        cfg = cls(
            path=path,
            vocab_filename=require_file(resolve(raw["vocab_filename"], "vocab_filename"), "vocab_filename"),
            sentencepiece_model=require_file(
                resolve(bpe["sentencepiece_model"], "bpe_tokenizer.sentencepiece_model"),
                "bpe_tokenizer.sentencepiece_model",
            ),
            audio_root=audio_root,
        )
        if raw.get("trim_vocab") is not None:
            cfg.trim_vocab = require_file(resolve(raw["trim_vocab"], "trim_vocab"), "trim_vocab")
        for key, kind in (("max_audio_seconds", float), ("min_audio_seconds", float), ("max_text_tokens", int)):
            if key in raw:
                try:
                    setattr(cfg, key, kind(raw[key]))
                except (TypeError, ValueError):
                    raise DataConfigError(f"{path}: {key} must be a number, got {raw[key]!r}") from None
        if not 0 <= cfg.min_audio_seconds < cfg.max_audio_seconds:
            raise DataConfigError(f"{path}: need 0 <= min_audio_seconds < max_audio_seconds")
        return cfg
