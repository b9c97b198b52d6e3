"""The serving wing: Triton model repositories (:mod:`.repository`), a real Triton server's lifecycle
(:mod:`.server`) and the load benchmark through it (:mod:`.bench`)."""
