"""Errors a user can fix, and how the entry points report them: one clear message, no traceback.

A :class:`CvexpError` says what is wrong, where (the file, the record or the config field) and how
to fix it. The ``python -m cvexp.<job>`` entry points print it as the run's last line and exit with
:data:`USER_ERROR_EXIT_CODE`; any other exception is a bug, and Hydra prints its traceback as usual.
``HYDRA_FULL_ERROR=1`` shows the traceback of a :class:`CvexpError` too.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("cvexp")

USER_ERROR_EXIT_CODE = 2

Task = TypeVar("Task", bound=Callable[..., Any])


class CvexpError(Exception):
    """A problem with the user's input (config, data, checkpoint) rather than a bug in cvexp."""


class ConfigError(CvexpError, ValueError):
    """A config value that cannot work; the message names the field and the fix."""


class DatasetError(CvexpError, ValueError):
    """Bad dataset input; the message names the file, the record, the field and the fix."""


class PretrainedWeightsError(ConfigError):
    """``model.pretrained`` cannot be loaded, or loads only in part (see :mod:`cvexp.models.pretrained`)."""


class UnsafeArtifactError(CvexpError):
    """A checkpoint or model artifact asks for something cvexp will not load: code, or a class it does not know."""


def exits_on_user_error(task: Task) -> Task:
    """Wraps a Hydra task function: a :class:`CvexpError` ends the run with its message and a non-zero status.

    The message goes through the ``cvexp`` logger, so it reaches both the console and the run's log
    file, and it is the last line the run prints.
    """

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except CvexpError as error:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            _close_progress_bars()
            log.error("%s", user_message(error))
            # SystemExit is not an Exception: Hydra lets it through without printing a traceback.
            raise SystemExit(USER_ERROR_EXIT_CODE) from None

    return run  # type: ignore[return-value]


def _close_progress_bars() -> None:
    """Closes the progress bars an interrupted run left open, which would otherwise redraw below the message at exit."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def user_message(error: BaseException) -> str:
    """The message of a :class:`CvexpError`, without the worker traceback that a DataLoader worker's error carries.

    PyTorch re-raises an exception of a worker process in the main process as the same type, with
    the worker's whole traceback as its message; the user's message is that traceback's last line.
    """
    text = str(error)
    marker = f"{type(error).__name__}: "
    if "Traceback (most recent call last)" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text


def instantiate(config: Any, /, **kwargs: Any) -> Any:
    """Hydra's ``instantiate``, with cvexp's own errors passed on as they were raised.

    Hydra wraps every exception of a ``_target_`` in an ``InstantiationException`` that repeats its
    message with Hydra's frame; a :class:`CvexpError` already says what to fix, so it is re-raised as is.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(config, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        while isinstance(cause, InstantiationException):  # nested targets wrap once per level
            cause = cause.__cause__
        if isinstance(cause, CvexpError):
            raise cause from None
        raise
