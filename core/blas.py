"""numpy's BLAS on one thread in a process that runs a network.

OpenBLAS (numpy's) wakes a thread per core for a matrix product and leaves them spinning for a
while after it. The serving path does small products between network runs (familiarity: 64 x 512
by 512 x 512), and the spinning threads then take the two cores from ONNX Runtime's or torch's own
pool: 64 cells took 133 ms through `Predictor.predict` against 70 ms with one BLAS thread, the
network alone 60 ms (bench/bench_engines.py measures the endpoint). A product that small gains
nothing from a second thread.
"""

from __future__ import annotations

from functools import cache


@cache
def one_blas_thread() -> None:
    """Limit every BLAS library loaded in this process to one thread, once (threadpoolctl);
    called where a serving network is built (core/onnxsession.py, the torch engines)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
