"""Console scripts ``comsl-<verb>``: one thin argparse module per command."""
