"""The performance benchmark as a library (``scripts/bench_perf.py`` is its command line).

- :mod:`eval.perf.grid`: the configurations of each prompt length, medians and ratios;
- :mod:`eval.perf.measure`: one measured generation (:class:`~eval.perf.measure.Runner`);
- :mod:`eval.perf.memory`: RSS sampling and the KV bytes of any cache (:func:`~eval.perf.memory.kv_size`);
- :mod:`eval.perf.report`: column meanings, table, plot and README of a run.

docs/perf.md explains every column and the numbers measured with it.
"""
