"""oncoscale.parallel."""
