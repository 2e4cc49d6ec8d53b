"""The one exception type for mistakes a user can fix (bad config, missing data, bad checkpoint)."""


class UserError(Exception):
  """A problem in the user's input; the message names the problem and the fix in one line.

  Entry points catch it, print `error: <message>` to stderr and exit with status 2, without a
  traceback and without touching existing checkpoints.
  """


class DiskFull(UserError):
  """A save failed because the disk is full. The entry point exits at once after its line: the
  storage clients' abandoned background writes would otherwise print tracebacks while Python
  shuts down."""


class TrainingDiverged(UserError):
  """A loss, score or parameter became non-finite; the message names the step and the term."""


def check(ok: bool, message: str):
  """Raises UserError(message) unless `ok`."""
  if not ok:
    raise UserError(message)


def check_choice(value, choices, field: str):
  """Raises a UserError naming config field `field` unless `value` is one of `choices`."""
  check(value in choices, f"config.{field}={value!r} is not one of "
        f"{', '.join(map(str, choices))}; set --config.{field}=<one of them>")
