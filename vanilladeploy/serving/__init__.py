"""The serving wing: Triton model repositories (:mod:`.repository`), a real Triton server's lifecycle
(:mod:`.server`), the load benchmark through it (:mod:`.bench`), and the files a cluster needs (:mod:`.cluster`,
with :mod:`.manifests` and :mod:`.sizing`)."""
