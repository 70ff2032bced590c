"""Bundles: a pruned model written for every runtime (`bundle`) and read back without unpickling (`reading`)."""
