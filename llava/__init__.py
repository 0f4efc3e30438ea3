"""LLaVA-1.5 core: upstream LLaVA's public API on current transformers, CPU and GPU."""
