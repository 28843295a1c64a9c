"""Prediction with missing modalities."""
