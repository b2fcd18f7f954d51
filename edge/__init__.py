"""Edge inference for low-resource clinics.

The headless core (config, store, imaging, runtime, registry, pipeline) is importable without
a terminal or a web framework; `edge.tui` and `edge.hub` sit on top of it.
"""

__version__ = "0.1.0"
