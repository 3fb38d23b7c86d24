"""results/device-pg-kl: pg with and without DPOK's KL term on a GPU machine."""
