"""Median milliseconds per call between CUDA events, after warm-up: the timing the GPU scripts
here share (`from cuda_timing import med`; scripts/ is on the path of a script run from it)."""

import statistics

import torch


def med(fn, reps=30, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)
