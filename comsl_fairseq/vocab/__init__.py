"""The mBART-50 vocabulary: language tags, the fairseq dictionary and its fingerprint."""
