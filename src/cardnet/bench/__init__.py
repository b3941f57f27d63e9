"""Benchmarks run by ``cardnet bench``: each figure is printed beside its bound,
measured in the same run on the same machine and disk."""
