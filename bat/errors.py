"""One exception type for every problem a user can fix by changing input."""


class ConfigError(ValueError):
    """Bad parameters, a wrong profile name, or missing inputs.

    The message is one line that names the field, the bad value and what is allowed or what to
    run, so that the command-line entry points can print it without a traceback.
    """
