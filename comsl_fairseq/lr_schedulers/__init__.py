"""LR schedulers; importing registers them with fairseq."""
from comsl_fairseq.lr_schedulers import epoch_polynomial_decay  # noqa: F401  (registers it)
