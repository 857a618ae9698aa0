"""The GPU check (``scripts/gpu_check.py``): correctness of the CUDA path and speed/memory at 8B scale.

Parts: :mod:`.models` (the models and prompts the check runs on), :mod:`.methods` (methods from
their configs), :mod:`.tokens` (greedy token identity against the full cache), :mod:`.kept` (kept
entries on the device against the CPU for the same inputs), :mod:`.attention_paths` (every decode
attention path against a dense reference), :mod:`.perf` (prefill, compression, decode, memory),
:mod:`.clock` (the time budget) and :mod:`.report` (CSV, JSON, Markdown).
"""
