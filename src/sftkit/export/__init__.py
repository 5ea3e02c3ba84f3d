"""Export: a run folder -> a standalone, verified model folder."""
