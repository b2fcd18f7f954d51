"""Widgets of the technicians' terminal UI."""
