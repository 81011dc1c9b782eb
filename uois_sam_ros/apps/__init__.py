"""Command-line tools (evaluation, bag tools, demos); they sit above core, ros and nodes."""
