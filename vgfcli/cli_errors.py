"""How every ``vgf`` command ends on an error: bad input (``VgfError``) and a full disk in one line on
stderr with exit code 2, a bug in one line with exit 1 (its traceback with ``VGF_DEBUG=1``)."""

from __future__ import annotations

import errno
import functools
import os

import typer

from vgfcli.errors import VgfError


def user_errors(func):
    """Bad input ends in one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except VgfError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            full = _disk_full(exc)
            if full is None:  # a bug, not the user's fault: say so, keep the traceback on request
                return _internal_error(exc)
            # the run that was writing is already FAILED (the stage runner marks every error so)
            typer.echo(f"error: no space left on the device ({full}); free some space or set VGF_HOME to "
                       "another disk, then run the command again", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _disk_full(exc: BaseException) -> str | None:
    """What was being written when the disk filled up (an OSError ENOSPC/EDQUOT anywhere in the chain of
    causes, or SQLite's "database or disk is full" from MLflow's store), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(exc.filename or "writing")
        if "database or disk is full" in str(exc):
            return "the MLflow store's database"
        exc = exc.__cause__ or exc.__context__
    return None


def _internal_error(exc: Exception):
    """A bug, not the user's fault: one line and exit 1 (the traceback with VGF_DEBUG=1)."""
    if os.environ.get("VGF_DEBUG"):
        raise exc
    detail = " ".join(str(exc).split())[:300]
    typer.echo(f"error: internal error ({type(exc).__name__}: {detail}); rerun with VGF_DEBUG=1 for the "
               "traceback", err=True)
    raise typer.Exit(1) from None
