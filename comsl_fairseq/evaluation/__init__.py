"""Reading results: BLEU/chrF scoring, fairseq logs, decoded systems and the modality-gap report."""
