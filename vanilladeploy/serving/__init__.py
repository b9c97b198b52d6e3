"""Serving, the running kind: a real Triton server's lifecycle (:mod:`.server`, :mod:`.process`), ``serve`` and its
watch (:mod:`.serve`, :mod:`.watch`, :mod:`.health`), any server by its URL (:mod:`.client`), and load through it
(:mod:`.load`, :mod:`.serve_bench`). May import :mod:`vanilladeploy.triton` (the repositories it serves), never
:mod:`vanilladeploy.cluster`."""
