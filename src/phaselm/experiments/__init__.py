"""The experiments behind the CLI: Phase-Mamba (pretrain, train, observe), the demo, train-lm."""
