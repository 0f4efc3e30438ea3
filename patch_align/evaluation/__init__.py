"""`patch-align eval`: evaluation suites over LLaVA checkpoints (suite file, answering, scoring, report)."""
