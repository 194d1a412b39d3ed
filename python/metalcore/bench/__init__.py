"""Benchmarks: ours against PyTorch (and Liger-Kernel where installed) on the device present.

Run ``python -m metalcore.bench`` (``--help`` for options). Times are medians of many runs, taken
with CUDA events after warm-up on GPU (and with ``time.perf_counter`` on CPU), each call fed from a
rotating set of inputs larger than the L2 cache. Every row also shows the error against a float64
reference, so a fast wrong answer cannot hide.
"""
