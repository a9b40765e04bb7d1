"""Bench stage: accuracy and speed of every (model, backend), tables, report, plot."""
