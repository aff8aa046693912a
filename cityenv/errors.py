"""The exception hierarchy of cityenv.

Every error raised for bad user input derives from :class:`CityEnvError` and from the builtin it
refines (``ValueError``, ``FileNotFoundError``), so callers can catch either. Messages say what was
expected, what came, and what to do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CityEnvError(Exception):
    """Base class of every cityenv error."""


# --- geometry -------------------------------------------------------------------------------
class InvalidPoseError(CityEnvError, ValueError):
    """A pose, quaternion or trajectory holds NaN/inf values or is otherwise malformed."""


class InvalidGeodeticError(CityEnvError, ValueError):
    """A latitude, longitude or height is out of range or not finite."""


class ShapeMismatchError(CityEnvError, ValueError):
    """An array's shape disagrees with the camera or with another array it goes with."""


class InvalidDepthError(CityEnvError, ValueError):
    """A depth map holds negative or non-finite values (0 means "no depth")."""


class InvalidCameraError(CityEnvError, ValueError):
    """Camera intrinsics are not positive/finite."""


# --- citydb ---------------------------------------------------------------------------------
class CityDBError(CityEnvError):
    """Base class of street-view database errors."""


class ManifestNotFoundError(CityDBError, FileNotFoundError):
    """The database folder has no manifest: it is not a CityDB (or was never committed)."""


class CityDBFormatError(CityDBError, ValueError):
    """The manifest or view table is malformed or of an unsupported format version."""


class UnsafePathError(CityDBError, ValueError):
    """The view table names a file outside the database folder."""


class CorruptImageError(CityDBError, ValueError):
    """A stored image or depth map cannot be decoded."""


class ViewNotFoundError(CityDBError, KeyError):
    """No view with the requested id exists in the database."""


class IngestError(CityDBError, ValueError):
    """An ingestion source (CSV, panorama, depth file) is malformed."""


# --- clip store -----------------------------------------------------------------------------
class ClipStoreError(CityEnvError):
    """Base class of clip store errors (the rendered target clips, ``docs/clips.md``)."""


class ClipStoreNotFoundError(ClipStoreError, FileNotFoundError):
    """The folder holds no clip store (no ``store.json``)."""


class ClipStoreFormatError(ClipStoreError, ValueError):
    """A store, index part, ``clip.json``, frame or pose file is malformed or of another format
    version."""


class ClipNotFoundError(ClipStoreError, KeyError):
    """No complete clip with the requested id is in the store."""


class ClipSplitError(ClipStoreError, ValueError):
    """A clip of a split the store was not opened for was asked for (test areas in training)."""


class FrameRangeError(ClipStoreError, IndexError):
    """Frame indices outside a clip's ``[0, num_frames)``."""


# --- names and configuration ----------------------------------------------------------------
class UnknownNameError(CityEnvError, ValueError):
    """A name (weather, backend, city, preset) is not one of the known ones; says "did you mean"."""


class ConfigError(CityEnvError, ValueError):
    """A typed config or option mapping got an unknown key or a value of the wrong type or range.

    The message names the key, what was expected and what came.
    """


class UnknownOptionError(UnknownNameError, ConfigError, TypeError):
    """An options mapping (a world model's ``world_model_options``) names a key that is not an
    option; says "did you mean". A ``TypeError`` too, as an unexpected keyword argument is."""


class InvalidOptionError(ConfigError, TypeError):
    """An option has the wrong type (a ``TypeError``) or a value out of its range (a
    ``ValueError``); says which option, what was expected and what came."""


# --- models -------------------------------------------------------------------------------
class CheckpointError(CityEnvError, ValueError):
    """A model folder is missing a part, describes another model, or holds pickled weights."""


# --- environment ----------------------------------------------------------------------------
class InvalidActionError(CityEnvError, ValueError):
    """An action is outside the action space or holds NaN/inf values."""


class OutOfCoverageError(CityEnvError, ValueError):
    """A start or goal lies outside the streets the database covers."""


class CityDataNotFoundError(CityEnvError, FileNotFoundError):
    """No street-view database was given or found for a city; says how to build one."""


class VectorEnvMismatchError(CityEnvError, ValueError):
    """The environments of a vector environment were given keyword arguments that make their
    observation or action spaces differ (one frame size here, another there)."""


class AgentSpaceMismatchError(CityEnvError, ValueError):
    """A saved agent was trained on another observation or action space than the environment
    it is loaded for (other keys, frame size or action count)."""


# --- evaluation -----------------------------------------------------------------------------
class EvaluationError(CityEnvError, ValueError):
    """An evaluation or validation pass cannot run as asked: no held-out clip long enough for the
    window, a window that is not whole chunks, a CityDB anchored elsewhere than the clip store."""


class BenchError(EvaluationError):
    """A bench spec that does not fit its data or its rows: clips that do not exist or are too
    short, a frame size a row's model cannot make, results of another bench in the run folder."""


class MetricWeightsError(CityEnvError, ValueError):
    """Weights given for a perceptual metric (LPIPS, FID, FVD) cannot be read or are of another
    network: the message names the missing, unexpected and reshaped keys."""


class MetricWeightsNotFoundError(MetricWeightsError, FileNotFoundError):
    """The path given for a metric's weights does not exist or holds no weights file."""


class MetricInputError(CityEnvError, ValueError):
    """Frames or clips given to a metric have the wrong dtype, shape or count."""


# --- training -------------------------------------------------------------------------------
class LatentCacheError(CityEnvError, ValueError):
    """A training latent cache folder is incomplete, of another format, or was made for other
    data, VAE or settings (its key differs); says how to (re)make it."""


# --- helpers --------------------------------------------------------------------------------
def unknown_name(
    kind: str,
    name: object,
    choices: Iterable[str],
    *,
    error: type[CityEnvError] = UnknownNameError,
    advice: str = "",
) -> CityEnvError:
    """The error for a name that is not one of ``choices``, with "Did you mean ...?".

    Every "unknown name" message of the project comes from here, so they all read alike:
    ``"<kind> must be one of [...], got 'x'. Did you mean 'y'? <advice>"``.

    Args:
        kind: What the name names, for the message (``"weather"``, ``"action_mode"``).
        name: The name given.
        choices: The known names.
        error: The exception class to build (an :class:`UnknownNameError` by default; a
            module's own error class where its callers catch that one).
        advice: A sentence appended to the message (what to do).

    Returns:
        The exception, to ``raise``.
    """
    known = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(str(name), known, n=1)
    message = f"{kind} must be one of {known}, got {name!r}."
    if close:
        message += f" Did you mean {close[0]!r}?"
    if advice:
        message += f" {advice}"
    return error(message)


def check_name(
    kind: str,
    name: object,
    choices: Iterable[str],
    *,
    error: type[CityEnvError] = UnknownNameError,
    advice: str = "",
) -> str:
    """``name`` as a string if it is one of ``choices``; else raises :func:`unknown_name`'s error.

    Raises:
        UnknownNameError: (or ``error``) If ``name`` is not known.
    """
    known = [str(c) for c in choices]
    if isinstance(name, str) and name in known:
        return name
    raise unknown_name(kind, name, known, error=error, advice=advice)


# --- ingestion of panoramas and photos --------------------------------------------------------
class PanoramaShapeError(IngestError):
    """An image given as a 2:1 equirectangular panorama is not 2:1, or its depth map is not."""


class PhotoSourceError(IngestError):
    """A photo source as a whole (folder, photo CSV, Mapillary JSON) cannot be read."""


class DepthModelError(IngestError):
    """A depth source cannot be set up (unknown name, a model folder that does not load)."""


class DepthlessViewWarning(UserWarning):
    """Views were stored without depth: retrieval can use them only as the lookahead sink."""


# --- strict loading and the environment's inputs (issue 15) -----------------------------------
class TextEncoderNotFoundError(CheckpointError, FileNotFoundError):
    """A text encoder's folder (a UMT5/T5/MiniLM path given in a spec or a saved model's
    ``config.json``) does not exist or lacks its model or tokenizer files."""


class UnsafeImportError(ConfigError, TypeError):
    """A name given as a string would import a module (``"package.module:attr"``) where only
    registered names are taken without an explicit opt-in; says how to register or opt in."""


# --- CityDB integrity (issue 15) ------------------------------------------------------------------
class ManifestLostError(ManifestNotFoundError):
    """The folder holds committed CityDB data (Parquet parts, blob shards) but no ``manifest.json``:
    it was lost or deleted. Nothing is changed; ``python -m cityenv.citydb repair PATH`` rebuilds
    the manifest from the parts."""


class CityDBIntegrityError(CityDBFormatError):
    """Stored data disagrees with what was recorded at commit: a checksum that does not match, a
    shard missing or shorter than committed, a manifest setting that contradicts its parts."""


class DamagedViewWarning(UserWarning):
    """A stored view could not be read (corrupt, truncated or missing bytes) and was skipped; issued
    once per view id."""


class ResetNeededError(CityEnvError, RuntimeError):
    """An environment was stepped before ``reset()`` began an episode."""


class CorruptSourceImageError(IngestError):
    """An image given to ingestion (a panorama or a photo) is cut short or damaged: decoding it
    would store made-up pixels."""
