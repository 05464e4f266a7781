"""The small exception hierarchy of the node."""


class RadnodeError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(RadnodeError):
    """settings.toml (or an override) has a wrong key or value; names both."""


class InvalidInstanceError(RadnodeError):
    """A received dataset cannot be accepted (unreadable, missing UIDs, bad pixels)."""


class StorageError(RadnodeError):
    """The spool or the index could not store an instance durably."""


class JobError(RadnodeError):
    """A job could not be processed (loading, pipeline, writing)."""


class DeliveryError(RadnodeError):
    """A destination refused or could not be reached."""


class SigningError(RadnodeError):
    """An output could not be signed, or a signing identity is unusable."""
