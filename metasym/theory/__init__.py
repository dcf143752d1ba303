"""Runnable theory: each module checks a published result numerically and has a command.

- ``invariant_krr``: the strict benefit of invariance in kernel ridge regression (arXiv 2106.02346).
- ``sample_cover``: sample covering numbers under a group (arXiv 2111.05529).
- ``whitening``: invariance from batch statistics (arXiv 2103.16634).
- ``noether``: Noether charges of training dynamics and their breaking (arXiv 2105.02716).

Run ``python -m metasym.theory.<module> --help``.
"""
