"""The ComSL processor: audio -> model inputs (log-mel, frame mask, source-language tag), ids -> text."""
import numpy as np
from transformers import BatchFeature, ProcessorMixin


class ComslProcessor(ProcessorMixin):
    """``processor(audio, sampling_rate=16000, src_lang="fr", return_tensors="pt")`` gives
    ``input_features``, ``attention_mask`` and ``src_lang_ids`` for ``model.generate``;
    ``text=`` (with ``tgt_lang=``) adds ``labels`` ``[tgt tag] pieces </s>`` padded with -100.
    ``batch_decode(ids)`` returns the text without tags (``skip_special_tokens`` defaults to True).
    ``src_lang`` / ``tgt_lang``: one code (``fr``, ``zh-CN``, ``fr_XX``) or one per clip."""

    def __init__(self, feature_extractor, tokenizer):
        super().__init__(feature_extractor, tokenizer)

    def __call__(self, audio=None, sampling_rate=None, src_lang=None, text=None, tgt_lang=None,
                 return_tensors=None, **kwargs) -> BatchFeature:
        if audio is None:
            raise ValueError("audio is required (a 16 kHz mono array or a list of them)")
        data = dict(self.feature_extractor(audio, sampling_rate=sampling_rate, **kwargs))
        n = data["input_features"].shape[0]
        if src_lang is not None:
            data["src_lang_ids"] = np.array(self._tag_ids(src_lang, n), dtype=np.int64)
        if text is not None:
            data["labels"] = self._labels(text, tgt_lang, n)
        return BatchFeature(data, tensor_type=return_tensors)

    def _tag_ids(self, langs, n: int) -> list:
        codes = [langs] * n if isinstance(langs, str) else list(langs)
        if len(codes) != n:
            raise ValueError(f"{len(codes)} language codes for {n} clips")
        return [self.tokenizer.tag_id(c) for c in codes]

    def _labels(self, text, tgt_lang, n: int) -> np.ndarray:
        texts = [text] if isinstance(text, str) else list(text)
        if tgt_lang is None or len(texts) != n:
            raise ValueError("labels need tgt_lang= and one text per clip")
        tok = self.tokenizer
        rows = [[tag] + tok.convert_tokens_to_ids(tok.tokenize(t)) + [tok.eos_token_id]
                for tag, t in zip(self._tag_ids(tgt_lang, n), texts, strict=True)]
        labels = np.full((n, max(len(r) for r in rows)), -100, dtype=np.int64)
        for i, r in enumerate(rows):
            labels[i, : len(r)] = r
        return labels

    def batch_decode(self, *args, skip_special_tokens=True, **kwargs):
        return self.tokenizer.batch_decode(*args, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, *args, skip_special_tokens=True, **kwargs):
        return self.tokenizer.decode(*args, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self):
        return ["input_features", "attention_mask", "src_lang_ids"]


__all__ = ["ComslProcessor"]
