"""Data: dataset readers, RLE, synthetic scenes, camera frame sources."""
