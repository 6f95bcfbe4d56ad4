"""oncoscale.expression."""
