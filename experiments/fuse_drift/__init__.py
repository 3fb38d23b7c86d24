"""results/fuse-drift: whether fused targets' policy gradients point one way."""
