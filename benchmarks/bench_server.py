"""Cost of serving: POST /reconstruct and POST /preview against the Python API called directly (the baseline).

    python benchmarks/bench_server.py [--resolution 32] [--repeats 3] [--threads 1]

Uses the reduced random-weights TripoSR of tests/data (or the model that ``--weights`` names) and an RGBA
image of a disc on a stem. Requests go through FastAPI's in-process TestClient (multipart parsing, the body-size
middleware, image decoding from the upload, GLB encoding), so the ratio shows what the HTTP layer adds to a
reconstruction; /preview adds the turntable render. Prints the median wall and CPU seconds of each and their ratios
to the baseline (CPU seconds are the steadier figure on a shared machine). One torch thread by default: with more,
the baseline, called from the main thread, was seen to spend several times the CPU of the same call in the server's
worker thread on a busy 2-core machine, which hides what the HTTP layer costs.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from monorecon.api import ReconstructOptions, load_model, reconstruct_full
from monorecon.io.images import pil_to_array
from monorecon.server import ServerSettings, create_app, mesh_file

TINY_WEIGHTS = Path(__file__).parents[1] / "tests" / "data" / "triposr_ref" / "model.safetensors"


def test_image() -> Image.Image:
    image = Image.new("RGBA", (300, 300), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 40, 240, 220), fill=(220, 140, 40, 255))
    draw.rectangle((120, 200, 180, 270), fill=(90, 60, 30, 255))
    return image


def median_seconds(function, repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``function()``; CPU time (all threads of this process) is the steadier one."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(TINY_WEIGHTS))
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.weights)
    settings = ServerSettings(max_mc_resolution=max(args.resolution, 8))
    client = TestClient(create_app(model, settings=settings))
    image = test_image()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    upload = {"image": ("bench.png", buffer.getvalue(), "image/png")}
    form = {"mc_resolution": str(args.resolution)}
    array = pil_to_array(image)
    options = ReconstructOptions(mc_resolution=args.resolution)

    def direct() -> None:
        mesh_file(reconstruct_full(array, model, options).mesh, "glb", "bench")

    def served(path: str) -> None:
        response = client.post(path, files=upload, data=form)
        assert response.status_code == 200, response.text

    direct()  # warm-up
    served("/reconstruct")
    faces = reconstruct_full(array, model, options).mesh.num_faces
    baseline = median_seconds(direct, args.repeats)
    reconstruct_s = median_seconds(lambda: served("/reconstruct"), args.repeats)
    preview_s = median_seconds(lambda: served("/preview"), args.repeats)
    print(f"model {Path(args.weights).name}, mc_resolution {args.resolution}, {faces} faces, {args.threads} threads")
    rows = [
        ("API call + GLB encoding (baseline)", baseline),
        ("POST /reconstruct", reconstruct_s),
        (f"POST /preview ({settings.preview_frames} frames of {settings.preview_size} px)", preview_s),
    ]
    for name, (wall, cpu) in rows:
        print(
            f"{name:<42} wall {wall:7.3f} s (ratio {wall / baseline[0]:.2f})  cpu {cpu:7.3f} s "
            f"(ratio {cpu / baseline[1]:.2f})"
        )
    print(f"median of {args.repeats}; numpy {np.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
