"""The systems under test (SPEC §2): Offline and Server SUTs over a generation backend.

Thin re-export of mlperf_llama2.loadgen.sut, where the SUTs, their LoadGen responder and the run
observer hooks live; the backends are in mlperf_llama2.backends (`--backend NAME`).
"""

from mlperf_llama2.loadgen.sut import OfflineSUT, Responder, RunObserver, ServerSUT, sut_class  # noqa: F401

__all__ = ["OfflineSUT", "ServerSUT", "Responder", "RunObserver", "sut_class"]
