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
    │   ├── TransientError        a failure worth retrying: network, 5xx, bad image
    │   └── BadInput              the job's input is not a usable image: reported, never sent
    ├── JobDeferred               the input is still being written: try again on a later pass
    └── Interrupted               Ctrl-C (exit 130)
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
    """Worth retrying: connection refused/reset, timeout, 5xx, empty or bad image."""


class BadInput(JobFailed):
    pass


class JobDeferred(DrawpipeError):
    """Not a failure: the job cannot start yet (e.g. its input is still being copied)."""


class Interrupted(DrawpipeError):
    exit_code = 130
