"""Log-mel features for ComSL: Whisper's, computed for each clip at its own length.

transformers' ``WhisperFeatureExtractor`` pads a batch to 30 s (or to its longest clip)
before the STFT, so a clip's last frames and its normalisation depend on the padding. Here
every clip is transformed alone (the same ``_torch_extract_fbank_features`` arithmetic:
reflection padding at the clip's own ends, the 8-decade floor over the clip), then the
features are zero-padded to the longest clip and a frame mask says which are real.
"""
import numpy as np
from transformers import BatchFeature, WhisperFeatureExtractor


class ComslFeatureExtractor(WhisperFeatureExtractor):
    """16 kHz mono waveforms -> ``input_features`` B x n_mels x T and ``attention_mask`` B x T.

    ``pad_seconds`` > 0: every clip is cut or zero-padded to that length first and the silence
    is input (a model trained with fixed padding); ``trailing_silence``: seconds of silence
    appended to every clip (capped at 30 s). Clips over 30 s are refused: segment them first.
    """

    model_input_names = ["input_features", "attention_mask"]

    def __init__(self, feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400,
                 padding_value=0.0, pad_seconds=0.0, trailing_silence=0.0, **kwargs):
        kwargs.pop("return_attention_mask", None)
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, hop_length=hop_length,
                         chunk_length=chunk_length, n_fft=n_fft, padding_value=padding_value,
                         return_attention_mask=True, **kwargs)
        self.pad_seconds = float(pad_seconds)
        self.trailing_silence = float(trailing_silence)

    def _clip_input(self, wav: np.ndarray) -> np.ndarray:
        """The waveform the encoder reads for one clip (fixed length or silence appended)."""
        if self.pad_seconds > 0:
            n = int(round(self.pad_seconds * self.sampling_rate))
            return np.pad(wav[:n], (0, max(0, n - wav.size)))
        if self.trailing_silence > 0:
            n = min(wav.size + int(round(self.trailing_silence * self.sampling_rate)), self.n_samples)
            return np.pad(wav, (0, max(0, n - wav.size)))
        return wav

    def __call__(self, raw_speech, sampling_rate=None, return_tensors=None, device="cpu", **kwargs) -> BatchFeature:
        """One clip (1-D array) or a list of clips -> BatchFeature(input_features, attention_mask)."""
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(f"the model reads {self.sampling_rate} Hz audio, got sampling_rate={sampling_rate}: "
                             "resample it first")
        is_batched = isinstance(raw_speech, (list, tuple)) and not np.isscalar(raw_speech[0])
        clips = raw_speech if is_batched else [raw_speech]
        feats = []
        for clip in clips:
            wav = np.asarray(clip, dtype=np.float32)
            if wav.ndim != 1:
                raise ValueError(f"a clip must be 1-D (mono samples), got shape {wav.shape}")
            if wav.size > self.n_samples:
                raise ValueError(f"a clip of {wav.size / self.sampling_rate:.1f} s exceeds the encoder's "
                                 f"{self.chunk_length} s window; segment it first")
            feats.append(self._torch_extract_fbank_features(self._clip_input(wav), device))  # n_mels x T_i
        T = max(f.shape[-1] for f in feats)
        features = np.full((len(feats), self.feature_size, T), self.padding_value, dtype=np.float32)
        mask = np.zeros((len(feats), T), dtype=np.int32)
        for i, f in enumerate(feats):
            features[i, :, : f.shape[-1]] = f
            mask[i, : f.shape[-1]] = 1
        return BatchFeature({"input_features": features, "attention_mask": mask}, tensor_type=return_tensors)


__all__ = ["ComslFeatureExtractor"]
