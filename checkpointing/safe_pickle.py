"""Unpickling that can only rebuild what a checkpoint legitimately holds.

A checkpoint's ``_vecnormalize.pkl`` and the cloudpickled entries of its zip's ``data``
document are pickles, and a pickle can call any importable function while it loads. Digests
in the metadata prove a file was not damaged, not who wrote it: anyone who can write into the
models root can write a matching metadata file too. So the loader never hands these bytes to
:mod:`pickle` or cloudpickle as they are; it unpickles them with :class:`CheckpointUnpickler`,
which resolves only the classes and helpers that SB3, gymnasium and numpy put into a saved PPO
model and VecNormalize (:data:`ALLOWED_GLOBALS`). Anything else (``os.system``,
``builtins.eval``, cloudpickle's code rebuilders for lambdas) raises :class:`UnsafePickleError`
before it is called.

Policy weights need nothing from here: SB3 reads a zip's ``.pth`` entries with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

__all__ = [
    "ALLOWED_GLOBALS",
    "CheckpointUnpickler",
    "UnsafePickleError",
    "safe_loads",
    "safe_zip_objects",
]

_NUMPY = ("numpy._core", "numpy.core")

# (module, name) pairs a checkpoint pickle may resolve. Classes here are safe to construct
# from pickled arguments: none of them runs code, opens files or imports by name.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
        ("builtins", "complex"),
        ("builtins", "range"),
        ("builtins", "bytearray"),
        ("collections", "deque"),
        ("collections", "OrderedDict"),
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        *((f"{m}.multiarray", "_reconstruct") for m in _NUMPY),
        *((f"{m}.multiarray", "scalar") for m in _NUMPY),
        *((f"{m}.numeric", "_frombuffer") for m in _NUMPY),
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__randomstate_ctor"),
        ("numpy.random._generator", "Generator"),
        ("numpy.random._pcg64", "PCG64"),
        ("numpy.random._mt19937", "MT19937"),
        ("numpy.random.bit_generator", "SeedSequence"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        ("gymnasium.spaces.box", "Box"),
        ("gymnasium.spaces.discrete", "Discrete"),
        ("gymnasium.spaces.multi_discrete", "MultiDiscrete"),
        ("gymnasium.spaces.multi_binary", "MultiBinary"),
        ("gymnasium.spaces.dict", "Dict"),
        ("gymnasium.spaces.tuple", "Tuple"),
        ("stable_baselines3.common.policies", "ActorCriticPolicy"),
        ("stable_baselines3.common.policies", "ActorCriticCnnPolicy"),
        ("stable_baselines3.common.policies", "MultiInputActorCriticPolicy"),
        ("stable_baselines3.common.buffers", "RolloutBuffer"),
        ("stable_baselines3.common.buffers", "DictRolloutBuffer"),
        ("stable_baselines3.common.utils", "FloatSchedule"),
        ("stable_baselines3.common.utils", "ConstantSchedule"),
        ("stable_baselines3.common.utils", "LinearSchedule"),
        ("stable_baselines3.common.running_mean_std", "RunningMeanStd"),
        ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"),
        ("torch.optim.adam", "Adam"),
        ("torch.optim.rmsprop", "RMSprop"),
        *(
            ("torch.nn.modules.activation", name)
            for name in ("Tanh", "ReLU", "LeakyReLU", "ELU", "GELU", "SiLU", "Sigmoid", "Softplus")
        ),
    }
)

# numpy scalar types (np.float64, np.int64, ...) pickle as ``numpy <name>`` in some paths.
_NUMPY_SCALAR_TYPES = frozenset(
    {"bool_", "float16", "float32", "float64", "int8", "int16", "int32", "int64"}
    | {"uint8", "uint16", "uint32", "uint64"}
)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle tried to resolve a global that a checkpoint never needs."""

    def __init__(self, where: str, module: str, name: str) -> None:
        self.where = where
        self.module = module
        self.name = name
        super().__init__(
            f"{where} references {module}.{name}, which no checkpoint this project writes "
            "contains; refusing to unpickle it (if you trust the file, load it with SB3 directly)"
        )


class CheckpointUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that resolves only :data:`ALLOWED_GLOBALS`."""

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, *, where: str) -> None:
        super().__init__(file)
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module, name) in ALLOWED_GLOBALS or (
            module == "numpy" and name in _NUMPY_SCALAR_TYPES
        )
        if not allowed:
            raise UnsafePickleError(self._where, module, name)
        return super().find_class(module, name)


def safe_loads(raw: bytes, *, where: str) -> Any:
    """Unpickle ``raw`` with :class:`CheckpointUnpickler`; ``where`` names it in errors."""
    return CheckpointUnpickler(io.BytesIO(raw), where=where).load()


def safe_zip_objects(path: Path, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The cloudpickled entries of an SB3 zip's ``data`` document, unpickled safely.

    Pass the result to ``Algorithm.load(custom_objects=...)`` and SB3 uses these objects
    instead of calling ``cloudpickle.loads`` on the raw entries. Keys in ``skip`` (the caller's
    own custom objects) are left alone.

    Raises:
        UnsafePickleError: an entry references a global outside :data:`ALLOWED_GLOBALS`.
        pickle.UnpicklingError: the zip or an entry is malformed.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            document = json.loads(zf.read("data"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise pickle.UnpicklingError(f"{path.name}: unreadable SB3 data entry: {exc}") from exc
    if not isinstance(document, dict):
        raise pickle.UnpicklingError(f"{path.name}: the SB3 data entry is not a JSON object")
    objects: dict[str, Any] = {}
    for key, item in document.items():
        if key in skip or not isinstance(item, dict) or ":serialized:" not in item:
            continue
        where = f"{path.name} (data entry {key!r})"
        encoded = item[":serialized:"]
        try:
            raw = base64.b64decode(str(encoded).encode(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise pickle.UnpicklingError(f"{where}: not base64: {exc}") from exc
        try:
            objects[key] = safe_loads(raw, where=where)
        except UnsafePickleError:
            raise
        except Exception as exc:  # a malformed pickle raises anything from EOFError up
            raise pickle.UnpicklingError(f"{where}: {type(exc).__name__}: {exc}") from exc
    return objects
