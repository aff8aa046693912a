"""The latent cache of the transformer stage: VAE and text-encoder work done once, reused.

After finetrainers' ``data/precomputation.py``: :func:`precompute_latents` runs, once, everything
:meth:`~cityenv.train.tasks.TransformerTask.encode` computes with the frozen VAE and text
encoder for every sample of a :class:`~cityenv.train.data.TrainPairs` (the target, history,
warp, reference and sink latents, the warp's pooled mask channel, the caption's embedding) and
stores it with the poses and intrinsics the Plücker rays are rebuilt from (rays are cheap).
:class:`CachedPairs` serves these samples; ``TransformerTask.encode`` assembles them with no
VAE or text-encoder work, to the same result as the uncached path.

Layout of one cache folder, ``<root>/<key>/`` (``root`` defaults to
``<cache_dir()>/train-latents``, :func:`cityenv.paths.cache_dir`)::

    sample-0000000.safetensors   one per sample: its tensors, and its key, clip id and caption
                                 as metadata
    meta.json                    written last (rank 0): format, key, what the key hashes, count

The **key** hashes everything that affects the stored tensors (:func:`key_inputs`): the data
(the CityDB's manifest and files, the clip store's marker, index and used clips), the pair
settings and the windows they cut, the frame size, the VAE (its config and a hash of its
weights), the text encoder's spec, the sampling settings that shape a sample
(``chunk_frames``, ``history``, ``max_references``, ``use_sink``), the dtype, and the choice
seed; a change of any of them names another folder, so a stale cache is never read. Every file
is written under a temporary name and renamed when complete, so a killed precomputation never
leaves a partial file that is read later; a rerun skips the samples already present (resume).
A folder without ``meta.json`` is incomplete and refused by :meth:`LatentCache.open`.

**Random choices are fixed.** A ``TrainPairs`` sample draws one random choice, the sink offset,
from its seed. The cache draws it from ``choice_seed(index, seed)`` (``seed`` =
:data:`CHOICE_SEED` unless given), so with the cache each sample's sink offset is fixed across
epochs (without it, each epoch draws a new one). The per-step randomness (noise, timestep,
condition drops) still comes from the loop's per-sample seeds. :class:`FixedChoices` is the
uncached twin of a cache: ``TrainPairs`` samples with the very choices the cache fixed.

Under ``torchrun`` rank ``r`` encodes samples ``r::world_size``; rank 0 writes ``meta.json``
after a barrier and shows the progress bar.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cityenv.errors import LatentCacheError
from cityenv.paths import cache_dir
from cityenv.train.data import TrainPairs
from cityenv.train.loop import sample_seed
from cityenv.train.parallel import ParallelBackend
from cityenv.train.tasks import LATENTS, encode_latents, make_conditioner
from cityenv.worldmodel.diffusion import DiffusionWorldModel

__all__ = [
    "CHOICE_SEED",
    "FORMAT",
    "FORMAT_VERSION",
    "CachedPairs",
    "FixedChoices",
    "LatentCache",
    "cache_key",
    "choice_seed",
    "default_root",
    "key_inputs",
    "precompute_latents",
    "state_dict_hash",
]

FORMAT = "cityenv-train-latents"
FORMAT_VERSION = 1
CHOICE_SEED = 0
"""Default seed of the random choices (the sink offset) fixed in a cache."""
META = "meta.json"

# The sample arrays stored beside the latents (what the rays and logs need), and their dtypes.
_ARRAYS = {
    "target_poses": torch.float64,
    "history_poses": torch.float64,
    "intrinsics": torch.float64,
    "reference_poses": torch.float64,
    "reference_intrinsics": torch.float64,
    "reference_view_ids": torch.int64,
    "sink_pose": torch.float64,
}
_REFERENCE_ARRAYS = ("reference_poses", "reference_intrinsics", "reference_view_ids")


def choice_seed(index: int, seed: int = CHOICE_SEED) -> int:
    """The seed a cache draws sample ``index``'s random choices from (fixed across epochs)."""
    return sample_seed(seed, 0, index)


def default_root() -> Path:
    """Where caches live by default: ``<cache_dir()>/train-latents`` (one folder per key)."""
    return cache_dir() / "train-latents"


# --- the key --------------------------------------------------------------------------------------
def state_dict_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state dict: every entry's name, dtype, shape and bytes, sorted."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _data_fingerprint(dataset: TrainPairs) -> str:
    """SHA-256 of the data a dataset reads: small index files by content, bulk files by
    ``(path, size, mtime)`` (rewriting the data in place, or copying it without times, gives
    a new key: a recomputation, never a stale read)."""
    h = hashlib.sha256()

    def content(path: Path) -> None:
        h.update(f"{path.name}|".encode() + path.read_bytes())

    def stat(path: Path, base: Path) -> None:
        st = path.stat()
        h.update(f"{path.relative_to(base)}|{st.st_size}|{st.st_mtime_ns}|".encode())

    db, clips = dataset.citydb_path, dataset.clips_path
    content(db / "manifest.json")
    for path in sorted(p for p in db.rglob("*") if p.is_file() and not p.name.startswith(".")):
        stat(path, db)
    content(clips / "store.json")
    for path in sorted((clips / "index").glob("*.parquet")):
        content(path)
    for clip_id in sorted({w.clip_id for w in dataset.windows}):
        folder = clips / "clips" / clip_id
        content(folder / "clip.json")
        for path in sorted(p for p in folder.iterdir() if p.name != "clip.json"):
            stat(path, clips)
    return h.hexdigest()


def key_inputs(
    dataset: TrainPairs, model: DiffusionWorldModel, seed: int = CHOICE_SEED
) -> dict[str, Any]:
    """Everything that affects a cache's tensors, as JSON values (:func:`cache_key` hashes it)."""
    s = model.settings
    # diffusers' private entries (``_use_default_values``: a list in set order) are left out
    vae_config = {k: v for k, v in model.vae.vae.config.items() if not k.startswith("_")}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "data": _data_fingerprint(dataset),
        "pairs": json.loads(json.dumps(asdict(dataset.settings), default=str)),
        "windows": hashlib.sha256(
            json.dumps([[w.clip_id, w.start] for w in dataset.windows]).encode()
        ).hexdigest(),
        "size": [int(v) for v in dataset.size],
        "vae_config": json.loads(json.dumps(vae_config, default=str)),
        "vae_weights": state_dict_hash(model.vae.vae),
        "text_encoder": json.loads(json.dumps(model.text_encoder.spec, default=str)),
        "sampling": {
            "chunk_frames": s.chunk_frames,
            "history": s.history,
            "max_references": s.max_references,
            "use_sink": s.use_sink,
        },
        "dtype": str(model.transformer.dtype),
        "choice_seed": int(seed),
    }


def cache_key(inputs: Mapping[str, Any]) -> str:
    """The cache folder's name: 20 hex digits of the SHA-256 of :func:`key_inputs`."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# --- the folder -----------------------------------------------------------------------------------
def _sample_path(folder: Path, index: int) -> Path:
    return folder / f"sample-{index:07d}.safetensors"


def _replace_atomically(tmp: Path, final: Path) -> None:
    """Make ``tmp`` durable, then give it its final name (a reader sees all of it or nothing)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _temporary(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.tmp")


@dataclass(frozen=True)
class LatentCache:
    """A complete cache folder (see the module docstring).

    Attributes:
        folder: The folder, ``<root>/<key>``.
        meta: Its ``meta.json``: ``format``, ``format_version``, ``key``, ``inputs`` (what the
            key hashes), ``num_samples``.
    """

    folder: Path
    meta: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, folder: str | os.PathLike[str], key: str | None = None) -> LatentCache:
        """Open a complete cache folder.

        Args:
            folder: The cache folder.
            key: The key it must have (``None``: any).

        Raises:
            LatentCacheError: If the folder has no ``meta.json`` (never made, or its
                precomputation did not finish), another format or key, or misses a sample.
        """
        folder = Path(folder)
        redo = "run precompute_latents (python -m cityenv.train data.latent_cache=true) again"
        try:
            meta = json.loads((folder / META).read_text())
        except FileNotFoundError:
            raise LatentCacheError(
                f"expected a complete latent cache in {folder} (with {META}), found none: the "
                f"precomputation never ran or did not finish; {redo} (it resumes)."
            ) from None
        fmt = (meta.get("format"), meta.get("format_version"))
        if fmt != (FORMAT, FORMAT_VERSION):
            raise LatentCacheError(
                f"expected a {FORMAT} cache of version {FORMAT_VERSION} in {folder}, got "
                f"{fmt}; delete the folder and {redo}."
            )
        if key is not None and meta.get("key") != key:
            raise LatentCacheError(
                f"expected the latent cache of key {key} in {folder}, got key {meta.get('key')}:"
                f" it was made for other data, VAE or settings; {redo}."
            )
        cache = cls(folder, meta)
        missing = _missing(folder, len(cache))
        if missing:
            raise LatentCacheError(
                f"the latent cache {folder} lacks samples {missing[:10]} of {len(cache)}; "
                f"{redo} (it resumes)."
            )
        return cache

    @property
    def key(self) -> str:
        return str(self.meta["key"])

    def __len__(self) -> int:
        return int(self.meta["num_samples"])

    def load(self, index: int) -> dict[str, Any]:
        """Sample ``index``: its tensors under :data:`~cityenv.train.tasks.LATENTS` (CPU, the
        stored dtype) and its arrays (numpy) and strings as in a ``TrainPairs`` sample, plus
        ``frame_size`` ``(2,)`` (width, height).

        Raises:
            LatentCacheError: If the file belongs to another key (copied from another cache).
        """
        path = _sample_path(self.folder, int(index))
        with safe_open(str(path), framework="pt") as f:
            info = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        if info.get("key") != self.key:
            raise LatentCacheError(
                f"expected {path.name} of the cache of key {self.key}, got a file of key "
                f"{info.get('key')}; delete {path} and run precompute_latents again."
            )
        sample: dict[str, Any] = {
            LATENTS: {k.removeprefix("latents."): v for k, v in tensors.items() if "." in k},
            "clip_id": info["clip_id"],
            "start": int(info["start"]),
            "caption": info["caption"],
            "sink_offset": int(info["sink_offset"]),
        }
        sample.update({k: v.numpy() for k, v in tensors.items() if "." not in k})
        return sample


def _missing(folder: Path, count: int) -> list[int]:
    """Indices in ``range(count)`` without a sample file."""
    return [i for i in range(count) if not _sample_path(folder, i).is_file()]


def _write_sample(
    folder: Path, index: int, key: str, sample: Mapping[str, Any], latents: Mapping[str, Any]
) -> None:
    """One sample's file, atomically: latents (``latents.*``), arrays, and string metadata."""
    kept = int(latents["references"].shape[2])  # the references encode keeps (max_references)
    tensors = {f"latents.{k}": v.detach().cpu().contiguous() for k, v in latents.items()}
    for name, dtype in _ARRAYS.items():
        value = np.asarray(sample[name])
        value = value[:kept] if name in _REFERENCE_ARRAYS else value
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value)).to(dtype)
    frames = np.asarray(sample["target_frames"])
    tensors["frame_size"] = torch.tensor([frames.shape[2], frames.shape[1]], dtype=torch.int64)
    metadata = {
        "key": key,
        "index": str(index),
        "clip_id": str(sample["clip_id"]),
        "start": str(int(sample["start"])),
        "caption": str(sample["caption"]),
        "sink_offset": str(int(sample["sink_offset"])),
    }
    final = _sample_path(folder, index)
    tmp = _temporary(final)
    save_file(tensors, str(tmp), metadata=metadata)
    _replace_atomically(tmp, final)


def _write_meta(folder: Path, key: str, inputs: Mapping[str, Any], count: int) -> None:
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "key": key,
        "num_samples": int(count),
        "inputs": dict(inputs),
    }
    final = folder / META
    tmp = _temporary(final)
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    _replace_atomically(tmp, final)


def _remove_temporaries(folder: Path) -> None:
    """Drop the partial files a killed precomputation left (never read: not a sample's name)."""
    for path in folder.glob(".*.tmp"):
        path.unlink(missing_ok=True)


# --- datasets -------------------------------------------------------------------------------------
class CachedPairs(Dataset):
    """The samples of a :class:`LatentCache` (``TransformerTask.encode`` needs no VAE for them).

    Args:
        cache: The cache, or its folder (opened with :meth:`LatentCache.open`).
        pairs: The :class:`TrainPairs` it was made from, if at hand (names samples in messages;
            the validation pass reads its data folders and settings).
    """

    def __init__(
        self, cache: LatentCache | str | os.PathLike[str], pairs: TrainPairs | None = None
    ) -> None:
        self.cache = cache if isinstance(cache, LatentCache) else LatentCache.open(cache)
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.cache)

    def describe(self, index: int) -> str:
        """``<clip_id>@<frame>`` of sample ``index`` when the pairs are known, else its index."""
        return self.pairs.describe(index) if self.pairs is not None else f"sample {index}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.cache.load(index)


class FixedChoices(Dataset):
    """``TrainPairs`` samples with the random choices a cache of ``seed`` fixes (the uncached
    twin of :class:`CachedPairs`: same samples, pixels instead of latents).

    Args:
        pairs: The training pairs.
        seed: The cache's choice seed.
    """

    def __init__(self, pairs: TrainPairs, seed: int = CHOICE_SEED) -> None:
        self.pairs, self.seed = pairs, int(seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.pairs.get_seeded(index, choice_seed(index, self.seed))


class _Subset(Dataset):
    """The samples of given indices, with the cache's fixed choices, and their index."""

    def __init__(self, pairs: TrainPairs, indices: list[int], seed: int) -> None:
        self.data, self.indices = FixedChoices(pairs, seed), indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, dict[str, Any]]:
        return self.indices[i], self.data[self.indices[i]]


# --- precomputation -------------------------------------------------------------------------------
def _process_backend(device: torch.device) -> ParallelBackend:
    """This process's rank and world: torchrun's process group if one is open, else alone."""
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return ParallelBackend(dist.get_rank(), local, dist.get_world_size(), torch.device(device))
    return ParallelBackend(device=torch.device(device))


def precompute_latents(
    dataset: TrainPairs,
    model: DiffusionWorldModel,
    root: str | os.PathLike[str] | None = None,
    *,
    backend: ParallelBackend | None = None,
    progress: bool = True,
    seed: int = CHOICE_SEED,
    num_workers: int = 0,
) -> LatentCache:
    """Encode every sample of ``dataset`` once (or finish an interrupted run) and open the cache.

    Every rank calls it (under ``torchrun`` rank ``r`` encodes samples ``r::world_size``).

    Args:
        dataset: The training pairs.
        model: The world model whose VAE and text encoder encode them (on its device, in its
            transformer's dtype).
        root: The folder of caches; this one is ``root/<key>`` (default :func:`default_root`).
            Every rank must see the same folder (a shared file system across nodes).
        backend: The run's ranks (default: torchrun's process group if open, else one process).
        progress: A progress bar on rank 0.
        seed: Seed of the fixed random choices (see the module docstring).
        num_workers: ``DataLoader`` worker processes preparing samples.

    Returns:
        The complete cache.

    Raises:
        LatentCacheError: If a sample is still missing after every rank finished (a rank
            failed, or the ranks do not share ``root``).
    """
    be = backend or _process_backend(model.device)
    inputs = key_inputs(dataset, model, seed)
    key = str(be.broadcast_object(cache_key(inputs)))  # rank 0's data copy names the cache
    folder = Path(root if root is not None else default_root()).expanduser() / key
    if (folder / META).is_file() and not _missing(folder, len(dataset)):
        return LatentCache.open(folder, key)  # (a lost sample file is made again below)
    folder.mkdir(parents=True, exist_ok=True)
    if be.is_main:
        _remove_temporaries(folder)
    be.barrier()
    todo = [
        i
        for i in range(be.rank, len(dataset), be.world_size)
        if not _sample_path(folder, i).is_file()
    ]
    _encode_all(dataset, model, folder, key, todo, seed, num_workers, progress and be.is_main)
    be.barrier()
    missing = _missing(folder, len(dataset))
    if missing:  # every rank sees the same folder, so every rank stops here
        raise LatentCacheError(
            f"precomputation of {folder} ended without samples {missing[:10]}; a rank failed "
            "(see its log), or the ranks do not share this folder; run it again (it resumes)."
        )
    if be.is_main:
        _write_meta(folder, key, inputs, len(dataset))
    be.barrier()
    return LatentCache.open(folder, key)


def _encode_all(
    dataset: TrainPairs,
    model: DiffusionWorldModel,
    folder: Path,
    key: str,
    todo: list[int],
    seed: int,
    num_workers: int,
    progress: bool,
) -> None:
    conditioner = make_conditioner(model)
    loader = DataLoader(
        _Subset(dataset, todo, seed),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
    )
    items: Iterator[tuple[int, dict[str, Any]]] = iter(loader)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, total=len(todo), desc="latents", unit="sample")
    for index, sample in items:
        _write_sample(folder, index, key, sample, encode_latents(model, conditioner, sample))


def _identity(item: Any) -> Any:
    return item
