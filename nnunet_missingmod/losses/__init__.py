"""Auxiliary losses of the missing-modality methods (one module per loss family)."""
