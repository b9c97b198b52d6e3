"""What a cluster needs (``deploy``): the plan and the set of files (:mod:`.plan`), the KServe and Kubernetes objects
(:mod:`.manifests`), replicas and resources (:mod:`.sizing`). Imports :mod:`vanilladeploy.triton` for the
repository, never :mod:`vanilladeploy.serving`: writing a cluster's files starts no server and sends no request."""
