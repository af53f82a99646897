"""Errors of the profiler. The original exception is chained where there is one."""

from fastgshare.errors import FastGShareError


class ProfileError(FastGShareError):
    """A profile could not be made (the function did not deploy, answer, or meet any rate)."""


class ProfileCancelled(ProfileError):
    """The profile was stopped because its function was removed or redeployed with other code."""
