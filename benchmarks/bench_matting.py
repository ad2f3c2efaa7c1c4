"""Preparing a folder of photos with ``--matting-model``: the ONNX session loaded once per file (now) against once per
photo (the baseline, what ``matting_alpha`` did before session 27), measured in the same run by clearing the session
cache before each photo.

No salient-object model can be downloaded here, so the model is a stand-in of U2Net's size: its saliency is the
photo's red channel, and it carries 44 M float weights (176 MB, the size of ``u2net.onnx``) that onnxruntime reads
and folds at load, as it reads a real model's. Prints wall seconds per photo and their ratio (``onnx``, a dev
dependency, writes the stand-in).

    python benchmarks/bench_matting.py [--photos 8] [--weights-mb 176]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from monorecon.preprocess import PreprocessConfig, _load_matting_session, preprocess_image


def stand_in_model(path: Path, weights_mb: int) -> None:
    """(1, 3, 320, 320) -> (1, 1, 320, 320): the red channel plus 0 x the sum of ``weights_mb`` MB of weights."""
    weights = numpy_helper.from_array(np.ones(weights_mb * 250_000, dtype=np.float32), "weights")
    zero = numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero")
    index = {name: numpy_helper.from_array(np.array([value], dtype=np.int64), name)
             for name, value in (("starts", 0), ("ends", 1), ("axes", 1))}  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["red"]),
            helper.make_node("ReduceSum", ["weights"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["red", "nothing"], ["saliency"]),
        ],
        "stand_in_u2net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("saliency", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=[weights, zero, *index.values()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)


def photo(seed: int) -> np.ndarray:
    """A 480 x 640 photo: a red-ish object on a cluttered (noisy) background."""
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.0, 0.4, (480, 640, 3)).astype(np.float32)
    image[120:360, 200:440] = (0.9, 0.3, 0.2)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--weights-mb", type=int, default=176)
    args = parser.parse_args()
    photos = [photo(seed) for seed in range(args.photos)]
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "stand_in.onnx"
        stand_in_model(model, args.weights_mb)
        config = PreprocessConfig(matting_model=model)
        seconds = {}
        for name, per_photo_load in (("a session per photo (baseline)", True), ("one session per file", False)):
            _load_matting_session.cache_clear()
            start = time.perf_counter()
            for image in photos:
                if per_photo_load:
                    _load_matting_session.cache_clear()
                prepared = preprocess_image(image, config)
            seconds[name] = (time.perf_counter() - start) / len(photos)
            assert prepared.alpha.max() > 0.5  # the stand-in found the object
        print(f"{len(photos)} photos, a {model.stat().st_size / 1e6:.0f} MB model")
        for name, value in seconds.items():
            print(f"{name:32} {value:.3f} s per photo")
        baseline, cached = seconds.values()
        print(f"ratio x{baseline / cached:.1f}")


if __name__ == "__main__":
    main()
