"""results/budget-probe: the grid's configuration for more epochs, or with the last steps left out."""
