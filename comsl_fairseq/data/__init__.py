"""Data side of ComSL: manifests, audio, the mBART-50 dictionary, datasets (SPEC §3)."""
