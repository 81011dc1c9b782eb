"""Segmentation models and the frame-to-instances pipeline (SAM, HPG, HDNet, geometric)."""
