"""The technicians' terminal UI (`edge tui`): worklist, results, live ultrasound, sync, device.

The only package that imports Textual (an import-linter contract keeps the core headless). Entry
points: `edge.tui.app.create_app` (tests) and `edge.tui.app.run_tui` (the CLI).
"""
