"""Convs with oneDNN's prepacked weights, for eager float32 inference on the CPU.

PyTorch's CPU conv reorders its weights into oneDNN's blocked layout on every call. For a small
input that reorder costs as much as the conv itself (ResNet-50 at batch 1: a 3x3 conv of 256
channels reorders 590 k weights to compute on a 14x14 map). ``torch.compile``'s freezing packs the
weights once (``mkldnn_reorder_conv2d_weight``) and calls ``mkldnn::_convolution_pointwise`` on
them; ``conv2d`` does the same in eager mode, keeping the packed weights beside the module for
each input shape seen, and packing again when the weights change.

Only for channels_last float32 inputs on the CPU, with no gradient needed, in a plain eager call;
anything else (training, tracing, export, CUDA) runs the module as it is. The packed copies are a
cache beside the conv (``PackedWeights``): never in its ``state_dict``, and copies and pickles of
the model start without them.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_CACHE_ATTRIBUTE = "_ghostify_prepacked"
SHAPES_KEPT = 4  # input shapes whose packed weights one conv keeps (batch sizes a deployment alternates)
# A plain conv packs its weights from this size on: below it the reorder saves less than the call's own
# overhead (CIFAR ResNet-56's convs, at most 36,864 weights, ran 1.3x slower packed at batch 1; ResNet-50's
# 3x3 convs of 128 channels and more, 147,456 weights and up, gain). A ghost module's convs always pack:
# their alternative, a oneDNN call that reorders, is slower than the packed one at every size.
PACK_FROM_WEIGHTS = 65_536

try:
    pointwise_conv = torch.ops.mkldnn._convolution_pointwise.default
    _reorder_weight = torch._C._nn.mkldnn_reorder_conv2d_weight
except (AttributeError, RuntimeError):  # a build without oneDNN
    pointwise_conv = _reorder_weight = None
_BUILT_WITH_ONEDNN = pointwise_conv is not None and torch.backends.mkldnn.is_available()


_switched_off = False


def available() -> bool:
    """Whether this PyTorch build can run convs on prepacked oneDNN weights (and ``disabled`` is not on)."""
    return _BUILT_WITH_ONEDNN and not _switched_off and torch.backends.mkldnn.enabled


@contextmanager
def disabled() -> Iterator[None]:
    """Within it, convs run as PyTorch runs them, without packed weights (to compare, or to rule them out)."""
    global _switched_off
    before, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = before


def eager_call(x: torch.Tensor) -> bool:
    """Whether ``x`` is a plain tensor run eagerly (not traced, scripted, compiled or exported)."""
    return type(x) is torch.Tensor and not torch.jit.is_tracing() and not torch.compiler.is_compiling()


def applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv2d(conv, x)`` takes the prepacked path (else it calls ``conv(x)``)."""
    weight = conv.weight  # the cheapest tests first: this runs before every conv of a deploy form
    return (
        x.dtype == torch.float32 == weight.dtype and x.is_cpu and x.dim() == 4 and x.shape[1] > 1
        and x.is_contiguous(memory_format=torch.channels_last)
        and not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
        and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple) and available() and eager_call(x)
    )


class PackedWeights:
    """One conv's packed weights, by input shape (the last ``SHAPES_KEPT``); copies and pickles start empty."""

    def __init__(self) -> None:
        self._packed: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # a model served from several threads shares its cache

    def __deepcopy__(self, memo: dict) -> PackedWeights:
        return PackedWeights()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def __len__(self) -> int:
        return len(self._packed)

    def get(self, conv: nn.Conv2d, input_shape: tuple[int, ...]) -> torch.Tensor:
        """``conv``'s weights packed for inputs of ``input_shape``, packed now unless they are already."""
        weight = conv.weight
        key = (input_shape, weight.data_ptr(), None if weight.is_inference() else weight._version)
        with self._lock:
            packed = self._packed.get(key)
            if packed is not None:
                self._packed.move_to_end(key)
                return packed
            for old in [old for old in self._packed if old[0] == input_shape]:  # packed from weights since changed
                del self._packed[old]
            while len(self._packed) >= SHAPES_KEPT:
                self._packed.popitem(last=False)
            with torch.no_grad():
                packed = _reorder_weight(weight.detach().to_mkldnn(), list(conv.padding), list(conv.stride),
                                         list(conv.dilation), conv.groups, list(input_shape))
            self._packed[key] = packed
            return packed


def weight_state(weight: torch.Tensor) -> tuple[int, int | None]:
    """Where ``weight`` lives and its version: changes when it is written to or replaced (an inference tensor
    has no version; it changes only in ``torch.inference_mode``)."""
    return weight.data_ptr(), None if weight.is_inference() else weight._version


class PackedCall:
    """``conv(x)`` for inputs of one shape, on packed weights and with its arguments made once: what a module
    runs again and again in a serving loop. ``current`` says whether the conv's weights are still those it packed."""

    __slots__ = ("conv", "packed", "arguments", "state")

    def __init__(self, conv: nn.Conv2d, input_shape: tuple[int, ...]) -> None:
        self.conv, self.packed, self.arguments = conv, packed_weight(conv, input_shape), call_arguments(conv)
        self.state = weight_state(conv.weight)

    def current(self) -> bool:
        return weight_state(self.conv.weight) == self.state

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_conv(x, self.packed, self.conv.bias, *self.arguments)


class FastPath:
    """A module's ``PackedCall`` s for the input shape it last ran on. While ``serves`` holds (the same input shape,
    still plain float32 channels_last inference, weights unchanged) the module runs them straight away, without
    ``applies``'s tests and the cache look-ups of each conv: about 10 us of Python per ghost module, a sixth of
    its time on CIFAR-sized maps at batch 1. Copies and pickles start empty, as ``PackedWeights`` do."""

    __slots__ = ("shape", "calls")

    def __init__(self, shape: torch.Size | None = None, calls: tuple[PackedCall, ...] = ()) -> None:
        self.shape, self.calls = shape, calls

    def __deepcopy__(self, memo: dict) -> FastPath:
        return FastPath()

    def __reduce__(self) -> tuple:
        return FastPath, ()

    def serves(self, x: torch.Tensor) -> bool:
        """Whether ``x`` can run on ``calls`` (for callers that checked ``eager_call(x)``)."""
        if not (x.shape == self.shape and type(x) is torch.Tensor and x.dtype == torch.float32 and x.is_cpu
                and x.is_contiguous(memory_format=torch.channels_last) and available()):
            return False
        if torch.is_grad_enabled() and (x.requires_grad or any(call.conv.weight.requires_grad for call in self.calls)):
            return False
        return all(call.current() for call in self.calls)


def conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, on weights packed once per input shape where ``applies``; the same result within rounding."""
    return packed_conv2d(conv, x) if applies(conv, x) else conv(x)


def _cache_of(conv: nn.Conv2d) -> PackedWeights:
    """The packed weights kept beside ``conv`` (an empty cache the first time)."""
    cache = conv.__dict__.get(_CACHE_ATTRIBUTE)
    if cache is None:
        cache = conv.__dict__[_CACHE_ATTRIBUTE] = PackedWeights()
    return cache


def packed_conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` on packed weights, for callers that checked ``applies(conv, x)``."""
    return pointwise_conv(x, packed_weight(conv, x.shape), conv.bias, *call_arguments(conv))


def packed_weight(conv: nn.Conv2d, input_shape: tuple[int, ...]) -> torch.Tensor:
    """``conv``'s weights packed for inputs of ``input_shape`` (kept beside the conv, packed again when they change)."""
    return _cache_of(conv).get(conv, tuple(input_shape))


def call_arguments(conv: nn.Conv2d) -> tuple:
    """What ``pointwise_conv`` takes after the input, the packed weights and the bias, for ``conv``."""
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, "none", [], ""


class PrepackedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that runs on packed weights where ``applies`` and it has ``PACK_FROM_WEIGHTS`` weights
    or more; the same parameters, ``state_dict`` and outputs. The deploy form's kept convs are these."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript skips this block
            if self.weight.numel() >= PACK_FROM_WEIGHTS and applies(self, x):
                return packed_conv2d(self, x)
        return self._conv_forward(x, self.weight, self.bias)


def prepack_convs_(model: nn.Module, skip: tuple[type[nn.Module], ...] = ()) -> nn.Module:
    """Make ``model``'s plain ``nn.Conv2d`` layers ``PrepackedConv2d``, in place (not those inside a ``skip`` module)."""
    inside = {id(sub) for module in model.modules() if isinstance(module, skip) for sub in module.modules()}
    for module in model.modules():
        if type(module) is nn.Conv2d and id(module) not in inside:
            module.__class__ = PrepackedConv2d
    return model


def with_prepacked_convs(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its plain convs ``PrepackedConv2d``: a baseline that owes a deploy form nothing."""
    return prepack_convs_(copy.deepcopy(model))
