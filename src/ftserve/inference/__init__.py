"""Serving base and fine-tuned models: the in-memory pool of weights and token-by-token generation."""
