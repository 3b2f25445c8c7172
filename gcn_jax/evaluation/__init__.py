"""Evaluation: test-time inference modes and segmentation metrics over a whole split."""
