"""Shared building blocks of the model families: linear, embedding, norm, rotary, attention."""
