"""Metrics and the missing-modality benchmark."""
