"""results/preview-h100: the grid's cells on a GPU machine, stopped at a deadline."""
