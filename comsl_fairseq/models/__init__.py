"""Models; importing registers them with fairseq."""
from comsl_fairseq.models import whisper_mbart_composite  # noqa: F401
