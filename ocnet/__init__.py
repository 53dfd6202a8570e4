"""ocnet: layer-parallel training of residual networks as optimal control."""
