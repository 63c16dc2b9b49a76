"""Configuration of the ComSL speech translation model for Hugging Face transformers.

Whisper audio encoder -> convolutional adapter -> [source-language tag ; speech] ->
mBART-50 encoder-decoder. The Whisper and mBART shapes are kept as transformers'
own ``WhisperConfig`` and ``MBartConfig``, whose layer classes the model reuses.
"""
from transformers import MBartConfig, PreTrainedConfig, WhisperConfig


class ComslConfig(PreTrainedConfig):
    """Shapes, token ids and language tags of an exported ComSL model.

    ``language_tags`` maps every mBART-50 tag (``fr_XX``) to its token id; ``language_codes``
    maps the accepted codes (``fr``, ``zh-CN``, ``fr_XX``) to their tag. ``pad_seconds`` > 0
    means the model was trained on clips padded or cut to that length (no padding mask);
    ``trailing_silence`` is the silence appended to every clip otherwise. Both are applied
    by the feature extractor, which reads them from here at export time.
    """

    model_type = "comsl_whisper_mbart"
    sub_configs_defaults = {"whisper_config": WhisperConfig, "mbart_config": MBartConfig}

    whisper_config: WhisperConfig | dict | None = None
    mbart_config: MBartConfig | dict | None = None
    adapter_ffn_mult: int = 4
    adapter_activation: str = "relu"
    language_tags: dict | None = None
    language_codes: dict | None = None
    vocab_size: int = 0
    d_model: int = 0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 2
    is_encoder_decoder: bool = True
    tie_word_embeddings: bool = True

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The mBART config: its decoder is the text side (generation caches are sized from it)."""
        return self.mbart_config

    def tag_id(self, code: str) -> int:
        """Token id of a language's tag, from a code such as ``fr``, ``zh-CN`` or ``fr_XX``."""
        tag = (self.language_codes or {}).get(code)
        if tag is None or tag not in (self.language_tags or {}):
            known = " ".join(sorted(c for c in (self.language_codes or {}) if "_" not in c))
            raise ValueError(f"unknown language code {code!r}; known codes: {known}")
        return int(self.language_tags[tag])


__all__ = ["ComslConfig"]
