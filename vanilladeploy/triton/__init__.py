"""Triton model repositories, written: the config from the graph (:mod:`.config`), the repository as one set
(:mod:`.repository`), the image ensemble (:mod:`.ensemble`), and the two Python-backend model files Triton runs
(:mod:`.python_model`, :mod:`.image_model`). Imports nothing of :mod:`vanilladeploy.serving` or
:mod:`vanilladeploy.cluster`: writing a repository needs no server."""
