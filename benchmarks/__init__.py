"""Micro-benchmarks of pcmae kernels (``python -m benchmarks.<name>``); not part of the installed package."""
