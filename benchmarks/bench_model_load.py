"""Load time of a GGUF model (default: the packaged SmolLM2-135M-Instruct), cold and warm, and transformers' GGUF
load of the same file in the same run.

* cold convert: the first use of the file: the header read and the tokenizer rebuilt, then every tensor
  dequantized to float32 and written as safetensors (``odrive.gguf_convert``), into a fresh temporary
  ``$ODRIVE_CACHE_DIR``;
* warm load: ``odrive.load_model`` once the converted folder exists (read the safetensors, place on the device);
* place on device: ``jax.device_put`` of the params already in host memory (part of the warm load);
* transformers: ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` (needs torch; it converts anew
  on every load).

Min and median over ``--repeats`` runs of each, and the ratios of the medians.

    python benchmarks/bench_model_load.py [--model NAME_OR_GGUF] [--repeats 3] [--no-transformers]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from safetensors.numpy import load_file

import odrive
from odrive.gguf_convert import WEIGHTS_FILE, converted_folder
from odrive.model_source import resolve_model


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def cold_convert(gguf_path: Path) -> None:
    """The first use of the file: convert into an empty cache folder (the user's cache is left alone)."""
    previous = os.environ.get("ODRIVE_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["ODRIVE_CACHE_DIR"] = cache
        try:
            converted_folder(gguf_path)
        finally:
            if previous is None:
                del os.environ["ODRIVE_CACHE_DIR"]
            else:
                os.environ["ODRIVE_CACHE_DIR"] = previous


def place_on_device(host: dict[str, np.ndarray]) -> None:
    jax.block_until_ready([jax.device_put(array) for array in host.values()])


def transformers_load(gguf_path: Path) -> None:
    import torch
    import transformers

    transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="a GGUF file or a packaged model name")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-transformers", action="store_true", help="skip transformers' load")
    args = p.parse_args()
    source = resolve_model(args.model)
    if not source.is_gguf:
        p.error(f"{args.model} is not a GGUF model")
    print(f"{source.name}: {source.path} ({source.path.stat().st_size / 2**20:.0f} MiB), "
          f"device {jax.devices()[0].platform}, {args.repeats} repeats")  # fmt: skip

    cold = timed(lambda: cold_convert(source.path), args.repeats)
    rows: dict[str, list[float]] = {"cold convert (dequantize + write)": cold}
    folder = converted_folder(source.path)  # the user's cache, for the warm rows
    odrive.load_model(source)  # one untimed load: the warm rows read files the OS has cached, JAX is initialised
    rows["warm load (cached folder -> device)"] = timed(lambda: odrive.load_model(source), args.repeats)
    host = load_file(str(folder / WEIGHTS_FILE))
    rows["  of which: place on device"] = timed(lambda: place_on_device(host), args.repeats)
    if not args.no_transformers:
        rows["transformers GGUF load"] = timed(lambda: transformers_load(source.path), args.repeats)

    print(f"\n{'':38} {'min s':>8} {'median s':>9}")
    for name, times in rows.items():
        print(f"{name:38} {min(times):8.2f} {statistics.median(times):9.2f}")
    median = {name: statistics.median(times) for name, times in rows.items()}
    cold, warm = median["cold convert (dequantize + write)"], median["warm load (cached folder -> device)"]
    print(f"\ncold convert / warm load: {cold / warm:.1f}x")
    if "transformers GGUF load" in median:
        hf = median["transformers GGUF load"]
        print(f"transformers / odrive warm load: {hf / warm:.1f}x;  transformers / odrive cold (convert + warm): "
              f"{hf / (cold + warm):.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
