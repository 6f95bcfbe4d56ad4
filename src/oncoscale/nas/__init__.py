"""oncoscale.nas."""
