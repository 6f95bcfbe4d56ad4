"""oncoscale.saliency."""
