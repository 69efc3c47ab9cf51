"""Experiments: scripts that run the simulator and the real engine and write tables and figures."""
