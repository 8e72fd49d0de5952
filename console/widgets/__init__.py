"""Reusable console widgets: keyed tables, priority lanes, the status bar and dialogs."""
