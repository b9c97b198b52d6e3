"""The export pipeline: checkpoint → verified ONNX (:mod:`.export`) and its optional steps, ``--precision fp16``
(:mod:`.fp16`), ``--precision int8`` (:mod:`.int8`, with the accuracy-aware float fallback in :mod:`.fallback`),
``--trt`` (:mod:`.trt_export`) and ``--openvino`` (:mod:`.openvino`); the typed report they fill (:mod:`.report`), the
runtime checks they share (:mod:`.checks`), the option records the CLI reads its defaults from (:mod:`.options`). The
public API's plain function is :func:`vanilladeploy.api.export`."""
