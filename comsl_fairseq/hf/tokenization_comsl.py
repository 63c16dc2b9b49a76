"""The ComSL vocabulary for transformers: SentencePiece pieces -> the training dictionary's ids.

``vocab.json`` is the fairseq dictionary the model was trained with, written out whole:
``<s> <pad> </s> <unk>``, mBART-50's ``dict.txt`` (or, for a model trained with a trimmed
vocabulary, its kept pieces), the 52 ML50 language tags, ``<mask>`` and ComSL's added tags
(``[cy_GB]``, ``[ca_ES]``), each with its training id. Text is split by
``sentencepiece.bpe.model`` (for a trimmed vocabulary, a copy that segments with the kept
pieces only) and every piece looked up there (``<unk>`` when absent), so ids equal the
training ids; a sequence is ``[lang tag] pieces </s>``.
"""
import json
import os
import shutil

import sentencepiece as spm
from transformers import PreTrainedTokenizer

SPIECE_UNDERLINE = "\u2581"


class ComslTokenizer(PreTrainedTokenizer):
    """SentencePiece + the fairseq dictionary. ``lang`` (a code such as ``fr``) selects the tag
    that opens encoded text; decoding with ``skip_special_tokens=True`` drops tags and
    ``<s> <pad> </s>``, and joins pieces as fairseq's SentencePiece decoding does."""

    vocab_files_names = {"vocab_file": "vocab.json", "sp_model_file": "sentencepiece.bpe.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, sp_model_file, language_codes=None, lang=None, bos_token="<s>",
                 eos_token="</s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", **kwargs):
        with open(vocab_file, encoding="utf-8") as f:
            self.vocab = json.load(f)
        self.ids_to_tokens = {i: t for t, i in self.vocab.items()}
        self.vocab_file, self.sp_model_file = vocab_file, sp_model_file
        self.sp = spm.SentencePieceProcessor(model_file=sp_model_file)
        self.language_codes = dict(language_codes or {})
        self.tag_ids = {self.vocab[f"[{tag}]"] for tag in self.language_codes.values() if f"[{tag}]" in self.vocab}
        self.lang = lang
        super().__init__(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
                         mask_token=mask_token, language_codes=self.language_codes, lang=lang, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def get_vocab(self) -> dict:
        return dict(self.vocab)

    def tag_id(self, code: str) -> int:
        """Token id of a language's tag (``fr``, ``zh-CN`` or ``fr_XX``)."""
        tag = self.language_codes.get(code)
        if tag is None or f"[{tag}]" not in self.vocab:
            known = " ".join(sorted(c for c in self.language_codes if "_" not in c))
            raise ValueError(f"unknown language code {code!r}; known codes: {known}")
        return self.vocab[f"[{tag}]"]

    def _tokenize(self, text, **kwargs):
        return self.sp.encode(text, out_type=str)

    def _convert_token_to_id(self, token):
        return self.vocab.get(token, self.vocab[str(self.unk_token)])

    def _convert_id_to_token(self, index):
        return self.ids_to_tokens.get(int(index), str(self.unk_token))

    def convert_tokens_to_string(self, tokens) -> str:
        return "".join(tokens).replace(SPIECE_UNDERLINE, " ").strip()

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        """``[lang tag] pieces </s>`` (no tag while ``lang`` is unset)."""
        ids = list(token_ids_0) + (list(token_ids_1) if token_ids_1 else [])
        prefix = [self.tag_id(self.lang)] if self.lang else []
        return prefix + ids + [self.eos_token_id]

    def _decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs) -> str:
        ids = [int(token_ids)] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        if skip_special_tokens:
            drop = self.tag_ids | {self.bos_token_id, self.pad_token_id, self.eos_token_id}
            ids = [i for i in ids if i not in drop]
        return self.convert_tokens_to_string([self._convert_id_to_token(i) for i in ids])

    def save_vocabulary(self, save_directory, filename_prefix=None) -> tuple:
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        out = []
        for src, name in ((self.vocab_file, "vocab.json"), (self.sp_model_file, "sentencepiece.bpe.model")):
            dst = os.path.join(save_directory, prefix + name)
            if os.path.abspath(src) != os.path.abspath(dst):
                shutil.copyfile(src, dst)
            out.append(dst)
        return tuple(out)


__all__ = ["ComslTokenizer"]
