"""Which ONNX operators TensorRT's ONNX parser accepts, and for which tensor types.

Data transcribed from onnx-tensorrt's operator support matrix (``docs/operators.md`` at commit 96e7811, June 2024,
the TensorRT 10.x parser: opsets 9 to 20). Restrictions on attributes and inputs are checked in code, in
:mod:`vanilladeploy.exporters.trt_compat`. Type names: FP32 FP16 BF16 INT32 INT64 INT8 UINT8 BOOL FP8 INT4 DOUBLE.
"""

from __future__ import annotations

OPSET_RANGE = (9, 20)
"""Inclusive range of default-domain opsets the TensorRT 10 parser documents."""

_FLOAT = frozenset({"FP32", "FP16", "BF16"})
_NUMERIC = _FLOAT | {"INT32", "INT64"}
_ANY = _NUMERIC | {"BOOL"}

SUPPORTED_TYPES: dict[str, frozenset[str]] = {
    **dict.fromkeys((
        "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "AveragePool", "BatchNormalization", "Ceil", "Celu",
        "Clip", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "Dropout", "Einsum", "Elu", "Erf", "Exp",
        "Floor", "GRU", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "GroupNormalization",
        "HardSigmoid", "HardSwish", "Hardmax", "ImageScaler", "InstanceNormalization", "IsInf", "LRN", "LSTM",
        "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax", "LpNormalization", "LpPool", "MatMul",
        "MaxPool", "MeanVarianceNormalization", "PRelu", "ParametricSoftplus", "Pow", "QuantizeLinear", "RNN",
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Reciprocal", "Resize",
        "Round", "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus", "Softsign",
        "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "Upsample",
    ), _FLOAT),
    **dict.fromkeys((
        "Abs", "Add", "ArgMax", "ArgMin", "DepthToSpace", "Div", "Equal", "Greater", "GreaterOrEqual", "IsNaN",
        "Less", "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Pad", "Range", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
        "ReduceSumSquare", "Relu", "Scatter", "ScatterElements", "ScatterND", "Shrink", "Sign", "SpaceToDepth",
        "Sub", "Sum", "TopK",
    ), _NUMERIC),
    **dict.fromkeys((
        "Concat", "Constant", "ConstantOfShape", "Expand", "EyeLike", "Flatten", "Gather", "GatherElements",
        "GatherND", "Identity", "If", "Loop", "OneHot", "Reshape", "ReverseSequence", "Shape", "Size", "Slice",
        "Split", "Squeeze", "Tile", "Transpose", "Trilu", "Unsqueeze", "Where",
    ), _ANY),
    **dict.fromkeys((
        "DeformConv", "GridSample", "Mish", "NonMaxSuppression", "NonZero", "RoiAlign",
    ), frozenset({"FP32", "FP16"})),
    **dict.fromkeys((
        "And", "Not", "Or", "Xor",
    ), frozenset({"BOOL"})),
    **dict.fromkeys((
        "Cast", "CastLike",
    ), frozenset({"FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"})),
    **dict.fromkeys((
        "DequantizeLinear",
    ), frozenset({"INT8", "FP8", "INT4"})),
    **dict.fromkeys((
        "Gelu",
    ), frozenset({"FP32", "FP16", "BF16", "INT32", "INT64", "INT8"})),
    **dict.fromkeys((
        "Mean",
    ), frozenset({"FP32", "FP16", "BF16", "INT32", "INT64", "FP8"})),
}

UNSUPPORTED: frozenset[str] = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "BlackmanWindow", "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
    "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "ImageDecoder", "MatMulInteger", "MaxRoiPool",
    "MaxUnpool", "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional",
    "OptionalGetElement", "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch", "STFT",
    "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
    "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer",
    "StringSplit", "TfIdfVectorizer", "Unique",
})
