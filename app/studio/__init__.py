"""Helpers of the HDAP Studio app: session state, cached engine calls, shared UI parts."""
