"""Network architectures that take an availability mask (one module per architecture family)."""
