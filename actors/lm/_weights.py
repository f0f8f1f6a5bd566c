"""Model weights as raw little-endian tensors for `engine.weights.pack`, and back, all or nothing.

Tied tensors (the LM head shares the embedding) travel once, under the first name the state dict
gives them; `load_tensors` writes them back through that name.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from protocols.messages import WeightManifest

if TYPE_CHECKING:
    import torch

__all__ = ["load_tensors", "state_tensors"]

_DTYPES = ("float32", "float16", "bfloat16", "float64")


def _unique_state(model: Any) -> dict[str, torch.Tensor]:
    """The state dict without aliases (tied weights appear once)."""
    seen: set[tuple[int, int]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def state_tensors(model: Any) -> list[tuple[str, str, list[int], bytes]]:
    """(name, dtype, shape, raw little-endian bytes) for every distinct tensor of the model."""
    if sys.byteorder != "little":  # pragma: no cover - every platform we run on is little-endian
        raise RuntimeError("state_tensors assumes a little-endian host")
    out = []
    for name, t in _unique_state(model).items():
        flat = t.detach().contiguous().cpu().reshape(-1)
        out.append((name, _dtype_name(t), list(t.shape), flat.view(_u8()).numpy().tobytes()))
    return out


def _u8() -> Any:
    import torch

    return torch.uint8


def load_tensors(model: Any, named: dict[str, memoryview], manifest: WeightManifest) -> None:
    """Load `named` (from `engine.weights.unpack`) into `model`, shaped by `manifest`.

    Everything is checked before anything is written: the names must be exactly the model's, each
    dtype and shape must match the model's tensor and the manifest entry, and the bytes must be
    the right size. On any mismatch a `ValueError` says which, and the model is left unchanged."""
    import torch

    target = _unique_state(model)
    entries = {e.name: e for e in manifest.tensors}
    if len(entries) != len(manifest.tensors):
        raise ValueError("the manifest names a tensor twice")
    for what, names in (("manifest", set(entries)), ("payload", set(named))):
        missing, extra = set(target) - names, names - set(target)
        if missing or extra:
            raise ValueError(
                f"{what} does not match the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(extra)[:5]}"
            )
    staged: dict[str, torch.Tensor] = {}
    for name, t in target.items():
        e = entries[name]
        if e.dtype not in _DTYPES:
            raise ValueError(f"{name}: unsupported dtype {e.dtype!r}")
        if e.dtype != _dtype_name(t) or list(e.shape) != list(t.shape):
            raise ValueError(
                f"{name}: manifest says {e.dtype}{list(e.shape)}, model has "
                f"{_dtype_name(t)}{list(t.shape)}"
            )
        dtype = getattr(torch, e.dtype)
        want = math.prod(e.shape) * torch.empty((), dtype=dtype).element_size()
        raw = named[name]
        if raw.nbytes != want:
            raise ValueError(f"{name}: {raw.nbytes} bytes, expected {want}")
        # A writable view (a fetched blob) is read in place: load_state_dict copies it into the
        # model. A read-only one (bytes from a checkpoint file) is copied, as frombuffer needs.
        buffer = bytearray(raw) if raw.readonly else raw
        data = torch.frombuffer(buffer, dtype=dtype) if want else torch.empty(0, dtype=dtype)
        staged[name] = data.reshape(e.shape)
        if not torch.isfinite(staged[name]).all():
            raise ValueError(f"{name}: non-finite values")
    full = {}
    aliases = model.state_dict()
    by_key = {
        (t.untyped_storage().data_ptr(), t.storage_offset()): name for name, t in target.items()
    }
    for name, t in aliases.items():
        full[name] = staged[by_key[(t.untyped_storage().data_ptr(), t.storage_offset())]]
    with torch.no_grad():
        model.load_state_dict(full, strict=True)
