"""Tasks; importing registers them with fairseq."""
from comsl_fairseq.tasks import comsl_speech_to_text  # noqa: F401
