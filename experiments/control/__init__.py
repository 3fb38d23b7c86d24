"""Issue 20's positive control: pilots' probes and the ceiling."""
