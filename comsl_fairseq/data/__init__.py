"""Data side of ComSL: manifests, audio, data config, clip lengths and the speech-text dataset."""
