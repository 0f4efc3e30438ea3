"""patch-align: fine-grained vision-language alignment for the LLaVA projector stage."""
