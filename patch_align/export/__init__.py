"""`patch-align export` / `patch-align import`: checkpoints to and from other layouts (docs/export.md)."""
