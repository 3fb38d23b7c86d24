"""results/grid-x3: probes of why dpo + fusion's final policies lose the second named object."""
