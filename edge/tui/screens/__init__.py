"""The TUI's screens, one module each; `base` holds what they share."""
