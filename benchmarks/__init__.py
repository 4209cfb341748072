"""Benchmarks of arraycnn against PyTorch and TensorFlow: run the scripts as ``python -m benchmarks.<name>``.

See ``benchmarks/README.md``. Nothing here is part of the engine; the peers are the optional ``bench`` extra.
"""
