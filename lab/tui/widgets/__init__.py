"""Widgets of the console that are not tied to one tab (charts)."""
