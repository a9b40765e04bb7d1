"""Compression stage: quantize, prune, distill."""
