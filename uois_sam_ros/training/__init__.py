"""Offline training of HPG and HDNet (CLIs), shared by UOAIS-Sim and the synthetic generator."""
