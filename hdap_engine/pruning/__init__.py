"""Pruning: the space of candidates (groups, widths, analytic MACs), budgets, applying a candidate."""
