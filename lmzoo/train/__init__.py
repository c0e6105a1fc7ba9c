"""Training objectives and data formats."""
