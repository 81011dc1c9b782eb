"""Test-time adaptation of SAM's mask decoder from clicks, and the click simulator / NoC-FR harness."""
