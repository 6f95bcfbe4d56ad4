"""oncoscale.topology."""
