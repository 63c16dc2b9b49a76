"""CoVoST 2 recipe: data preparation, training, evaluation and the Whisper input-length study."""
