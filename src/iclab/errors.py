"""The one exception family for bad user input: the CLI prints its one-line message and exits with code 2."""


class UserError(ValueError):
    """Bad user input (a config value, a command-line argument, an unusable run dir, a learner spec)."""


class UsageError(UserError):
    """A bad command-line value other than a config key (a flag's value, a device, a run dir)."""


class ResourceError(UserError):
    """A request that needs more memory than the machine has, or more steps than can finish."""
