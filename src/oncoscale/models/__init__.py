"""oncoscale.models."""
