"""The one place that imports spconv (optional dependency), with the fixes its CPU path needs.

spconv 2.x (``pip install spconv`` for CPU, ``spconv-cu12x`` for CUDA) is exact on CPU only with these:

1. Backward on CPU asserts CUDA: ``spconv.pytorch.ops`` imported ``get_current_stream`` from ``cppcore``
   and ``indice_conv_backward`` calls it unconditionally, which asks torch for the current CUDA stream.
   Without CUDA we replace ``spconv.pytorch.ops.get_current_stream`` with one that returns stream 0
   (the CPU kernels ignore it).
2. Its CPU gather / scatter-add kernels are OpenMP loops that race when more than one thread runs
   (upstream issues traveller59/spconv#366 and #679): with 2 torch threads, forward outputs and input
   gradients come out wrong in most runs (weight gradients stay right). Its OpenMP calls follow
   ``torch.set_num_threads``, so we run every spconv CPU call with one thread:
   - forward: the encoder's forward runs inside :func:`single_threaded`;
   - backward: autograd runs spconv's backward later, outside that block. :class:`BackwardThreadGuard`
     puts an identity autograd node on the encoder's outputs (its backward switches to 1 thread, before
     any spconv backward can run) and one on its input features (its backward restores the count, after
     the last spconv backward ran). A callback queued on the autograd engine restores it at the end of
     the backward pass in any case (e.g. ``torch.autograd.grad`` that does not reach the input). Nested
     guards (one encoder applied twice in a graph) count: threads come back only when the last one leaves.
   Trade-off: everything autograd runs between those two nodes (the whole encoder backward, and any other
   branch interleaved with it) is single-threaded too, while the rest of the model keeps all threads; the
   simpler alternative, ``torch.set_num_threads(1)`` for the whole process, would slow every other op. If a
   backward pass raises in the middle, the count stays at 1 (slower, never wrong). On CUDA nothing changes.
3. A CUDA build of spconv picks implicit-GEMM algorithms that fail on CPU tensors ("implicit gemm only
   support cuda"): :func:`select_conv_algo` switches conv layers to the native algorithm on CPU (both use
   the same (out, k, k, k, in) weight layout) and back on CUDA.
"""
from __future__ import annotations

import threading
import warnings
from contextlib import contextmanager

import torch

INSTALL_HINT = "pip install spconv (CPU) or spconv-cu12x (CUDA 12.x); the sparse-conv backbone needs it"

_spconv = None


def spconv_available() -> bool:
    try:
        require_spconv()
    except ImportError:
        return False
    return True


def require_spconv():
    """``spconv.pytorch`` with the workarounds applied; ImportError with the install hint if absent."""
    global _spconv
    if _spconv is None:
        try:
            with warnings.catch_warnings():  # its build helper (ccimport) warns about a deprecated locale call
                warnings.simplefilter("ignore", DeprecationWarning)
                import spconv.pytorch as spconv_pytorch
                from spconv.pytorch import ops as spconv_ops
        except ImportError as err:
            raise ImportError(f"spconv is not installed ({err}): {INSTALL_HINT}") from err
        if not torch.cuda.is_available():
            # Workaround 1: the CPU backward asks for a CUDA stream; give it stream 0.
            spconv_ops.get_current_stream = _no_cuda_stream
        _spconv = spconv_pytorch
    return _spconv


def _no_cuda_stream() -> int:
    return 0


@contextmanager
def single_threaded(enabled: bool = True):
    """Run the block with ``torch.set_num_threads(1)``; restore the previous count after (also on error)."""
    previous = torch.get_num_threads()
    if enabled and previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if enabled and previous != 1:
            torch.set_num_threads(previous)


class _BackwardThreads:
    """Process-wide count of spconv backward regions open; threads are 1 while it is > 0."""

    lock = threading.Lock()
    open_regions = 0
    saved_threads = 1

    @classmethod
    def enter(cls) -> None:
        with cls.lock:
            if cls.open_regions == 0:
                cls.saved_threads = torch.get_num_threads()
                torch.set_num_threads(1)
            cls.open_regions += 1

    @classmethod
    def leave(cls) -> None:
        with cls.lock:
            cls.open_regions -= 1
            if cls.open_regions == 0 and torch.get_num_threads() != cls.saved_threads:
                torch.set_num_threads(cls.saved_threads)


class _Region:
    """One forward call's backward region; leaves at most once per enter."""

    def __init__(self):
        self.is_open = False

    def enter(self) -> None:
        if not self.is_open:
            self.is_open = True
            _BackwardThreads.enter()
            torch.autograd.Variable._execution_engine.queue_callback(self.leave)

    def leave(self) -> None:
        if self.is_open:
            self.is_open = False
            _BackwardThreads.leave()


class _EnterOnBackward(torch.autograd.Function):
    """Identity on the encoder outputs; its backward runs before any spconv backward."""

    @staticmethod
    def forward(ctx, region, *tensors):
        ctx.region = region
        ctx.set_materialize_grads(False)  # unused outputs pass None on, no zero tensors
        return tuple(t.detach() for t in tensors)  # detach: shares storage and version counter, not a view

    @staticmethod
    def backward(ctx, *grads):
        ctx.region.enter()
        return (None, *grads)


class _LeaveOnBackward(torch.autograd.Function):
    """Identity on the encoder input; its backward runs after the last spconv backward."""

    @staticmethod
    def forward(ctx, region, features, anchor):
        ctx.region = region
        return features.detach()

    @staticmethod
    def backward(ctx, grad):
        ctx.region.leave()
        return None, grad, None


class BackwardThreadGuard:
    """Makes spconv's CPU backward single-threaded (workaround 2). Use once per forward:

        guard = BackwardThreadGuard(active=features.device.type == "cpu" and torch.is_grad_enabled())
        features = guard.wrap_input(features)          # before the first spconv layer
        ... spconv layers ...
        a, b = guard.wrap_outputs(a, b)                 # every tensor that leaves the spconv part
    """

    def __init__(self, active: bool):
        self.active = active
        self.region = _Region()

    def wrap_input(self, features: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return features
        # the anchor requires grad, so this node is in the graph even when features do not need a gradient
        anchor = torch.empty(0, device=features.device, requires_grad=True)
        return _LeaveOnBackward.apply(self.region, features, anchor)

    def wrap_outputs(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.active:
            return tensors
        return _EnterOnBackward.apply(self.region, *tensors)


def select_conv_algo(module: torch.nn.Module, device: torch.device) -> None:
    """Workaround 3: native algorithm for every spconv conv layer on CPU, the constructed one on CUDA."""
    spconv = require_spconv()
    native = spconv.ConvAlgo.Native
    for layer in module.modules():
        if isinstance(layer, spconv.conv.SparseConvolution):
            if not hasattr(layer, "_pcmae_cuda_algo"):
                layer._pcmae_cuda_algo = layer.algo
            layer.algo = native if device.type == "cpu" else layer._pcmae_cuda_algo
