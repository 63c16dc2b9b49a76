"""The toy demo: a synthetic spoken-number corpus, trained and scored in minutes on a CPU."""
