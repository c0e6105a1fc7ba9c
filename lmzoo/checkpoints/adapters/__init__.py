"""Per-family checkpoint adapters; the registry is lmzoo.checkpoints.hf.ADAPTERS."""
