class CaptchaError(Exception):
    """A problem the user can fix (bad data, bad setting, bad checkpoint); its message says how.
    The entry points print it as one line instead of a traceback."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the work stops, workers end, nothing half-written is left."""
