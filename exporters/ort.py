"""One ONNX Runtime session run over torch tensors through IO binding: inputs are read from, and outputs
written into, tensors the caller owns (CPU or CUDA), so the KV ring and the decoder state never go through
numpy copies and stay where the backend keeps them."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from exporters.errors import BackendError

log = logging.getLogger(__name__)

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.bool: np.bool_}
_TORCH = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int64)": torch.int64,
          "tensor(bool)": torch.bool}


def providers_available() -> list[str]:
    """ONNX Runtime's execution providers here; [] when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OrtGraph:
    """An InferenceSession on one device. CPU: `threads` intra-op threads, spinning off by default (waiting
    threads that spin steal the cores the rest of the stream needs on a small machine). CUDA: the CUDA
    execution provider on torch's current stream, so no extra synchronisation is needed between torch
    work and the graph."""

    def __init__(self, path: Path, device: torch.device, threads: int = 0, spin: bool = False):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu)")
            stream = torch.cuda.current_stream(device).cuda_stream
            providers: list = [("CUDAExecutionProvider", {"device_id": device.index or 0,
                                                          "user_compute_stream": str(stream)}),
                               "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.path, self.device = path, device
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.output_dtypes = {o.name: _TORCH[o.type] for o in self.session.get_outputs()}
        self.binding = self.session.io_binding()

    def _bind(self, name: str, t: torch.Tensor, output: bool) -> None:
        if not t.is_contiguous() or t.device.type != self.device.type:
            raise BackendError(f"{self.path.name}: tensor {name} must be contiguous on {self.device}")
        kind = "cuda" if t.device.type == "cuda" else "cpu"
        bind = self.binding.bind_output if output else self.binding.bind_input
        bind(name, kind, t.device.index or 0, _NUMPY[t.dtype], list(t.shape), t.data_ptr())

    def run(self, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> None:
        """Bind every input the graph has from `inputs` (extra names are ignored: the exporter drops inputs a
        graph does not read) and every output into the given tensors, then run."""
        self.binding.clear_binding_inputs()
        self.binding.clear_binding_outputs()
        for name in self.inputs:
            if name not in inputs:
                raise BackendError(f"{self.path.name} needs input {name!r}; got {sorted(inputs)}")
            self._bind(name, inputs[name], output=False)
        for name in self.outputs:
            self._bind(name, outputs[name], output=True)
        self.session.run_with_iobinding(self.binding)
