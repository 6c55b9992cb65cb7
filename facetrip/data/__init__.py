"""Data sets for facetrip."""
