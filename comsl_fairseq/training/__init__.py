"""Training helpers: LR/freeze schedule, distributed shims, setup checks, validation BLEU, first-batch stand-in."""
