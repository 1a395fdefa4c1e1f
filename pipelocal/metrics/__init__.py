"""Meters, JSONL, memory accounting and the console."""
