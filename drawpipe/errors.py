"""Errors a user can act on. Only the scripts print them and pick the exit code.

    DrawpipeError                 base; ``exit_code`` says how a script ends
    ├── UsageError                bad arguments or configuration (exit 2)
    │   ├── InputFileError        a malformed prompts/queue/payload/config file
    │   ├── ServerUnreachable     preflight ``GET /`` failed: wrong URL, app closed
    │   ├── ServerIncompatible    the running app lacks a key the template sends (an older app)
    │   ├── ServerRejected        HTTP 422: the server refused the request (never retried)
    │   │   └── StepRejected      ... naming the upscale recipe's step (upscaling.py)
    │   ├── CheckpointError       a SAM checkpoint missing, damaged or of another model
    │   │   └── DownloadFailed    --download could not fetch or verify it (checkpoints.py)
    │   ├── BadVerdict            a review verdict the store refuses: not accept/reject, not a
    │   │                         generated image, not a SHA-256 (reviews.py)
    │   └── ExportRefused         the export folder is not empty or lies inside the share (export.py)
    ├── JobFailed                 one job failed after its retries (exit 1, the batch goes on)
    │   ├── TransientError        a failure worth re-sending: refused connection, 5xx, bad image
    │   ├── MaybeStillDrawing     read timeout or dropped connection: the app may still be
    │   │                         drawing it, so this run never sends it again (sdapi.py)
    │   ├── WrongSize             the answer has another pixel size: a settings mismatch,
    │   │                         never re-sent
    │   └── BadInput              the job's input is not a usable image: reported, never sent
    ├── JobDeferred               the input is still being written: try again on a later pass
    ├── ShareLost                 the shared folder is gone or is no longer the one the run
    │                             started on (unmounted): stop at once, write nothing (exit 1)
    └── Interrupted               Ctrl-C, SIGTERM or SIGHUP (exit 130)

A file on the share that someone else has open (SMB's "busy": EBUSY, EACCES, EPERM,
a lingering "delete pending" name) is not an error of this hierarchy: the engine
tries again on a later pass (stage.py, claims.py).
"""


class DrawpipeError(Exception):
    exit_code = 1


class UsageError(DrawpipeError):
    exit_code = 2


class InputFileError(UsageError):
    """A file the user wrote is malformed; the message names the file and position."""


class ServerUnreachable(UsageError):
    pass


class ServerIncompatible(UsageError):
    """The app answering ``GET /`` does not have a key the template sends."""


class ServerRejected(UsageError):
    """HTTP 422 from the server. ``detail`` is the server's own explanation."""

    def __init__(self, url: str, detail: str):
        self.url = url
        self.detail = detail
        super().__init__(
            f"{url} rejected the request (HTTP 422): {detail} — fix the payload template "
            "or the app's settings and run again"
        )


class BadVerdict(UsageError):
    """A verdict the verdict store will not write (reviews.py); the review page answers
    it with HTTP 400 and the message."""


class ExportRefused(UsageError):
    """export.py will not write into this folder; nothing was written."""


class JobFailed(DrawpipeError):
    exit_code = 1


class TransientError(JobFailed):
    """Worth re-sending: connection refused or connect timeout (the request never
    arrived), 5xx, an empty or damaged image (the app is done with that request)."""


class MaybeStillDrawing(JobFailed):
    """No answer within the read timeout, or the connection dropped after the request
    was sent. Draw Things cannot be interrupted and runs one POST at a time, so a
    re-sent request would queue behind the one it may still be drawing: not re-sent
    by this run. ``resend_after_seconds``: when a --watch run may send it again."""

    def __init__(self, message: str, resend_after_seconds: float = 0.0):
        super().__init__(message)
        self.resend_after_seconds = resend_after_seconds


class WrongSize(JobFailed):
    """The server answered an image of another pixel size than the request asked for:
    the app's settings or the template disagree, and a re-send would do the same."""


class BadInput(JobFailed):
    pass


class JobDeferred(DrawpipeError):
    """Not a failure: the job cannot start yet (e.g. its input is still being copied)."""


class ShareLost(DrawpipeError):
    """The shared folder failed, or was unmounted (its device or marker file changed)."""

    exit_code = 1

    def __init__(self, root, reason: str):
        self.root = root
        self.reason = reason
        super().__init__(f"lost the shared folder {root} ({reason}): check the share is "
                         "mounted, then run the same command again")


class Interrupted(DrawpipeError):
    exit_code = 130
