"""Installs over the serial console: the console, the recipes that drive it, the seed CD they read."""
