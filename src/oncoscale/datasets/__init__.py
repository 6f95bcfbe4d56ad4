"""oncoscale.datasets."""
