"""iclab: the science of in-context learning."""

__version__ = "0.1.0"
