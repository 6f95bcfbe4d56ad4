"""oncoscale.comm."""
