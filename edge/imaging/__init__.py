"""Pure image functions (numpy in, numpy out) and the decoders that produce their input."""

from edge.imaging.decode import DecodedImage, decode_bytes, read_input
from edge.imaging.preprocess import PreprocessSpec, preprocess, preprocess_batch

__all__ = [
    "DecodedImage",
    "PreprocessSpec",
    "decode_bytes",
    "preprocess",
    "preprocess_batch",
    "read_input",
]
