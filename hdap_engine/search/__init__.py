"""Search: fleet objectives, evolutionary search under a MACs budget, baselines."""
