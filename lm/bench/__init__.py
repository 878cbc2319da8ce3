"""Benchmarks of the lm model: timing, peak memory, FLOP counting, profiles (torch only, no rich).

``lab bench`` (lab/commands/bench.py) is the command-line face of this package;
``bench/calc_vs_measured.py`` uses it on a bare GPU box. Modules:

* :mod:`lm.bench.harness` - cases, grids, :func:`~lm.bench.harness.run_case`, JSON output
* :mod:`lm.bench.steps` - forward / forward+backward / training step, as the trainer runs them
* :mod:`lm.bench.timing` - warm-up, synchronisation, median and spread
* :mod:`lm.bench.memory` - peak memory on CUDA (allocator) and CPU (profiler trace)
* :mod:`lm.bench.saved` - bytes autograd saves for backward (the activation ground truth)
* :mod:`lm.bench.profiling` - named ranges (record_function + NVTX) via hooks, traces, memory snapshots
* :mod:`lm.bench.calc_comparison` - measured vs predicted rows
"""
