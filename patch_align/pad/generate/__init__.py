"""PAD generation: tag -> detect -> segment over a LLaVA image set, sharded and resumable.

Modules: `options` (flags), `items` (the data JSON), `taggers`, `detectors`, `segmenters`
(the three stages), `pipeline` (batched run of one rank), `shards` (shard files, resume,
merge), `build` (options -> stages -> run). Nothing is imported here, so that reading
shards does not load torch.
"""
