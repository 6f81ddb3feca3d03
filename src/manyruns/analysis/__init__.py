"""Population analyses: streaming reductions over blocks of runs."""
