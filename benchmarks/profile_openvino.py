"""Where OpenVINO's CPU plugin spends its time on an exported graph: per node type and kernel
(OpenVINO's own ``PERF_COUNT`` profile), at the settings ``benchmarks/deploy.py`` times with.

    python benchmarks/profile_openvino.py <run>/model_fp32.onnx <run>/model.onnx --threads 1 2
    python benchmarks/profile_openvino.py model.onnx --top 20      # and the 20 slowest nodes
    python benchmarks/profile_openvino.py fp32.onnx model.onnx --precision f32 default

``--precision default`` drops the ``f32`` hint that deploy.py sets, so float ops run at the plugin's
default precision: bf16 on CPUs with AMX or AVX512-BF16, which changes the float results (that is
why deploy.py measures in f32) but shows what such a CPU gives a float graph.

For each graph and thread count: the median time of a batch (random images; the time does not
depend on the values) and, from one profiled call, the time per (node type, kernel) summed over
the nodes: ``brgconv_avx512_amx_I8`` is an int8 convolution, ``*_f32`` a float one, and a
``FakeQuantize`` listed on its own is a quantization OpenVINO could not fold into its producer.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import statistics
import time

import numpy as np

from lightning_ptq.export.runtimes import openvino_config

PRECISIONS = ("f32", "default")  # float ops in f32 (deploy.py's setting) or at the plugin's default


def profile(path: str, threads: int, batch: int, size: int, calls: int,
            precision: str = "f32") -> tuple[float, list, list]:
    import openvino as ov

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose {' or '.join(PRECISIONS)}")
    config = {**openvino_config(threads, None if precision == "default" else precision), "PERF_COUNT": True}
    request = ov.Core().compile_model(path, "CPU", config).create_infer_request()
    images = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    for _ in range(3):
        request.infer({0: images})
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        request.infer({0: images})
        seconds.append(time.perf_counter() - start)
    per_kind = collections.defaultdict(lambda: [0, 0.0])
    nodes = []
    for info in request.profiling_info:
        if info.status != info.Status.EXECUTED:
            continue
        ms = info.real_time.total_seconds() * 1e3
        per_kind[(info.node_type, info.exec_type)][0] += 1
        per_kind[(info.node_type, info.exec_type)][1] += ms
        nodes.append((ms, info.node_type, info.exec_type, info.node_name))
    kinds = sorted(((ms, n, t, e) for (t, e), (n, ms) in per_kind.items()), reverse=True)
    return statistics.median(seconds) * 1e3, kinds, sorted(nodes, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graphs", nargs="+", help="ONNX files (or OpenVINO .xml)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per graph (the median is printed)")
    parser.add_argument("--top", type=int, default=0, help="also list this many slowest nodes")
    parser.add_argument("--precision", nargs="+", default=["f32"], choices=PRECISIONS,
                        help="precision of the float ops: f32 (deploy.py's) or the plugin's default")
    args = parser.parse_args()
    for precision, threads, path in itertools.product(args.precision, args.threads, args.graphs):
        median, kinds, nodes = profile(path, threads, args.batch, args.size, args.calls, precision)
        print(f"\n{path}, {threads} thread(s), float ops {precision}, batch {args.batch}: {median:.1f} ms per batch "
              f"({args.batch / median * 1e3:.0f} images/s); profiled nodes {sum(k[0] for k in kinds):.1f} ms")
        for ms, count, node_type, kernel in kinds:
            if ms >= 0.05:
                print(f"  {ms:7.2f} ms  {count:4d} x {node_type:14s} {kernel}")
        for ms, node_type, kernel, name in nodes[:args.top]:
            print(f"  {ms:7.2f} ms  {node_type:14s} {kernel:28s} {name}")


if __name__ == "__main__":
    main()
