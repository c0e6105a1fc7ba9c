"""Per-family checkpoint adapters; the registry is lmzoo.io.hf.ADAPTERS."""
