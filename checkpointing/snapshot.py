"""Snapshots of a model and its VecNormalize, taken on the training thread, written later.

Taking a snapshot copies what a save needs (parameter tensors, optimizer state, the
SB3 ``data`` document, the pickled VecNormalize) so that training can go on while a
background thread writes it. The zip it writes has exactly the layout of SB3's
``model.save``, so plain ``PPO.load`` reads it.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecNormalize

__all__ = ["ModelSnapshot", "take_snapshot"]


def _clone_state(
    obj: Any, buffers: dict[tuple[Any, ...], Any] | None = None, key: tuple[Any, ...] = ()
) -> Any:
    """Deep copy of a state dict: tensors copied (detached), containers rebuilt.

    With ``buffers``, tensors are copied into the buffer kept under the same key from the
    previous snapshot when shape and dtype match: fresh memory for a 50 MB policy costs
    thousands of page faults per save, a copy into warm memory a fraction of that.
    """
    import torch

    if isinstance(obj, torch.Tensor):
        src = obj.detach()
        if buffers is None:
            return src.clone()
        buf = buffers.get(key)
        if (
            buf is None
            or buf.shape != src.shape
            or buf.dtype != src.dtype
            or buf.device != src.device
        ):
            buf = src.clone()
            buffers[key] = buf
        else:
            buf.copy_(src)
        return buf
    if isinstance(obj, dict):
        return {k: _clone_state(v, buffers, (*key, k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_state(v, buffers, (*key, i)) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_clone_state(v, buffers, (*key, i)) for i, v in enumerate(obj))
    return copy.deepcopy(obj)


@dataclass
class ModelSnapshot:
    """Everything needed to write one checkpoint, detached from the live model."""

    data_json: str
    params: dict[str, Any]
    pytorch_variables: dict[str, Any] | None
    vecnormalize: bytes | None

    def write_zip(
        self,
        path: str | os.PathLike[str] | io.BufferedIOBase,
        *,
        compress: bool,
        level: int = 1,
    ) -> None:
        """Write the SB3 zip (``data``, ``*.pth``, version, system info) to ``path``.

        ``compress``: ZIP_DEFLATED at zlib ``level`` (1-9), else ZIP_STORED. Either way
        plain ``PPO.load`` reads it.
        """
        import stable_baselines3 as sb3
        import torch
        from stable_baselines3.common.utils import get_system_info

        compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        target: Any = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
        with zipfile.ZipFile(
            target, mode="w", compression=compression, compresslevel=level if compress else None
        ) as zf:
            zf.writestr("data", self.data_json)
            if self.pytorch_variables is not None:
                with zf.open("pytorch_variables.pth", mode="w", force_zip64=True) as fh:
                    torch.save(self.pytorch_variables, fh)
            for file_name, state in self.params.items():
                with zf.open(file_name + ".pth", mode="w", force_zip64=True) as fh:
                    torch.save(state, fh)
            zf.writestr("_stable_baselines3_version", sb3.__version__)
            zf.writestr("system_info.txt", get_system_info(print_info=False)[1])

    def close(self) -> None:
        """Nothing to release: the snapshot is memory only."""


def take_snapshot(
    model: BaseAlgorithm,
    vec_normalize: VecNormalize | None,
    buffers: dict[tuple[Any, ...], Any] | None = None,
) -> ModelSnapshot:
    """Copy what :meth:`BaseAlgorithm.save` would write, plus the pickled VecNormalize.

    Runs on the training thread; costs a memory copy of the parameters and optimizer state.
    ``buffers`` (a dict the caller keeps) lets the copy reuse the previous snapshot's
    memory; the caller must make sure that snapshot has been written first.
    """
    from stable_baselines3.common.save_util import data_to_json

    # The same selection as BaseAlgorithm.save().
    data = model.__dict__.copy()
    exclude = set(model._excluded_save_params())
    state_dict_names, torch_variable_names = model._get_torch_save_params()
    for torch_var in state_dict_names + torch_variable_names:
        exclude.add(torch_var.split(".")[0])
    for name in exclude:
        data.pop(name, None)
    data_json = data_to_json(data)

    pytorch_variables: dict[str, Any] | None = None
    if torch_variable_names is not None:
        pytorch_variables = {}
        for name in torch_variable_names:
            obj: Any = model
            for part in name.split("."):
                obj = getattr(obj, part)
            pytorch_variables[name] = _clone_state(obj, buffers, ("vars", name))

    params = _clone_state(model.get_parameters(), buffers, ("params",))
    vec_bytes = pickle.dumps(vec_normalize) if vec_normalize is not None else None
    return ModelSnapshot(data_json, params, pytorch_variables, vec_bytes)
