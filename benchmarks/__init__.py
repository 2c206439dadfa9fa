"""Benchmarks that measure ftserve's engine against other trainers; run them as modules from the repo root."""
