"""Standalone programs that move bytes the way an ordinary program does, for profiling (issue 15)."""
