"""oncoscale.report."""
