"""The ops: each a plain PyTorch reference beside its fast paths, chosen by ops/backend.py."""
