"""Development-time tools: training, export, quantisation, release, benchmarks.

Run them as modules from the repository root, e.g. `python -m tools.train --config ...`.
They may import torch (the `tools` extra); nothing in `edge/` imports them.
"""
