"""Typed errors: every bad input names itself, so a learner sees what went wrong."""


class CBLabError(Exception):
    """Base class of every error raised on purpose by cblab_teach."""


class ConfigError(CBLabError, ValueError):
    """A model or engine setting is out of range."""


class RequestError(CBLabError, ValueError):
    """A request is malformed (empty prompt, ids outside the vocabulary, ...)."""


class DuplicateRequestError(RequestError):
    """A request id is already in use by the engine."""


class UnknownRequestError(RequestError):
    """A request id the engine has never seen."""


class KVCacheError(CBLabError):
    """The KV cache cannot do what was asked (pool exhausted, double free, ...)."""


class CapacityError(KVCacheError, RequestError):
    """A request can never fit the KV pool, however long it waits."""


class PluginError(CBLabError):
    """A plugin raised; the message names the plugin and the hook."""


class AdapterError(CBLabError, ValueError):
    """A LoRA adapter is malformed or does not fit the model (rank, shapes, target names)."""


class UnknownAdapterError(AdapterError, RequestError):
    """A request names an adapter the engine was never given."""


class DuplicateAdapterError(AdapterError):
    """An adapter name is already registered with the engine."""


class InvariantError(CBLabError):
    """The engine's own bookkeeping disagrees with itself: a bug, reported instead of computing wrong tokens.

    Raised where a bare ``assert`` would vanish under ``python -O``."""


class ModelNotInstalledError(CBLabError, ImportError):
    """A real model's weights or the packages that read them are not installed; the message says the command."""
