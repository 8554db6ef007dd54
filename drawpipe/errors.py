"""Errors a user can act on. Only the scripts print them and pick the exit code.

    DrawpipeError                 base; ``exit_code`` says how a script ends
    ├── UsageError                bad arguments or configuration (exit 2)
    │   ├── InputFileError        a malformed prompts/queue/payload/config file
    │   ├── ServerUnreachable     preflight ``GET /`` failed: wrong URL, app closed
    │   │   └── ServerNotAnswering  no answer at all (refused, timed out, 5xx): asleep or
    │   │                         closed; beside other servers it is retried (engine/quarantine.py)
    │   ├── ServerIncompatible    the running app lacks a key the template sends (an older app)
    │   ├── ServerRejected        HTTP 422: the server refused the request (never retried)
    │   │   └── StepRejected      ... naming the upscale recipe's step (``in_step``)
    │   ├── CheckpointError       a SAM checkpoint or label model file missing, damaged
    │   │                         or of another model
    │   │   └── DownloadFailed    --download could not fetch or verify it
    │   ├── BadVerdict            a review verdict the store refuses: not accept/reject, not a
    │   │                         generated image, not a SHA-256
    │   │   └── TakeChanged       the image on the share is not the take the page showed
    │   └── ExportRefused         the export folder is not empty or lies inside the share
    ├── JobFailed                 one job failed after its retries (exit 1, the batch goes on);
    │                             ``attempts``: requests sent, ``retry_after_seconds``: not
    │                             to be sent again sooner (the backend may still be at it)
    │   ├── TransientError        a failure worth re-sending: refused connection, 5xx, bad image
    │   ├── MaybeStillDrawing     read timeout or dropped connection: the app may still be
    │   │                         drawing it, so this run never sends it again (HTTP: its
    │   │                         retry_after_seconds is twice the read timeout)
    │   ├── WrongSize             the answer has another pixel size: a settings mismatch,
    │   │                         never re-sent
    │   └── BadInput              the job's input is not a usable image: reported, never sent
    ├── JobDeferred               the input is still being written: try again on a later pass
    ├── ShareLost                 the shared folder is gone or is no longer the one the run
    │                             started on (unmounted): stop at once, write nothing (exit 1)
    └── Interrupted               Ctrl-C, SIGTERM or SIGHUP (exit 130)

    RequestRejected               not a user error by itself: what the app would answer a
                                  body with (HTTP 422 and its ``detail``), from the API
                                  table's rules; the checks turn it into one of the above

A file on the share that someone else has open (SMB's "busy": EBUSY, EACCES, EPERM,
a lingering "delete pending" name) is not an error of this hierarchy: the engine
tries again on a later pass (engine/worker.py, engine/claims.py).
"""


class DrawpipeError(Exception):
    exit_code = 1


class UsageError(DrawpipeError):
    exit_code = 2


class InputFileError(UsageError):
    """A file the user wrote is malformed; the message names the file and position."""


class ServerUnreachable(UsageError):
    pass


class ServerNotAnswering(ServerUnreachable):
    """The server gave no answer at all (connection refused or not made in time, a 5xx):
    a Mac asleep, the app closed. Alone it stops the run like any ServerUnreachable;
    beside servers that answer, the engine reports it and tries it again at a growing
    interval (engine/quarantine.py). An answer that is not Draw Things' (a 404, other
    JSON) stays a configuration error."""


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

    def in_step(self, where: str) -> "StepRejected":
        """The same refusal, naming the recipe's step ``where`` ("step 2 (refine) of ...")."""
        return StepRejected(self.url, self.detail,
                            f"{self.url} rejected {where} (HTTP 422): {self.detail} — fix the "
                            "recipe or the app's settings and run again")


class BadVerdict(UsageError):
    """A verdict the verdict store will not write (curate/verdicts.py); the review page
    answers it with HTTP 400 and the message."""


class TakeChanged(BadVerdict):
    """The image on the share is not the take the page showed (the review page answers
    HTTP 409)."""


class ExportRefused(UsageError):
    """export.py will not write into this folder; nothing was written."""


class JobFailed(DrawpipeError):
    """One job failed. ``attempts``: the requests sent for it (1: no re-send).
    ``retry_after_seconds``: how long the job must not be sent again (to this or any
    server), because the backend may still be working on it and cannot be asked:
    None when it may be tried again after the usual pause; 0 when the backend has
    confirmed it stopped (a cancelled call). Any backend may raise it."""

    exit_code = 1

    def __init__(self, message: str, attempts: int = 1, retry_after_seconds: float | None = None):
        super().__init__(message)
        self.attempts = attempts
        self.retry_after_seconds = retry_after_seconds


class TransientError(JobFailed):
    """Worth re-sending: connection refused or connect timeout (the request never
    arrived), 5xx, an empty or damaged image (the app is done with that request)."""


class MaybeStillDrawing(JobFailed):
    """No answer within the read timeout, or the connection dropped after the request
    was sent. Draw Things cannot be interrupted and runs one POST at a time, so a
    re-sent request would queue behind the one it may still be drawing: not re-sent
    by this run; ``retry_after_seconds`` says when a --watch run may send it again."""


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


class CheckpointError(UsageError):
    """A SAM checkpoint or a label model file (sam/labels.py) is missing, unreadable, or
    does not fit the model it is loaded as."""


class DownloadFailed(CheckpointError):
    """``reason``: what went wrong, in a few words (for a shorter line of one's own)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class StepRejected(ServerRejected):
    """A server's refusal of one step of a recipe (ServerRejected.in_step): ``message``
    names the step and the recipe file, in the words of the transport that refused it."""

    def __init__(self, url: str, detail: str, message: str):
        self.url = url
        self.detail = detail
        Exception.__init__(self, message)


class RequestRejected(Exception):
    """The app answers this body with HTTP 422 and ``detail``. ``reason``: the same in
    plain words where ``detail`` is Swift's decoder text, else ``detail``."""

    def __init__(self, detail: str, reason: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.reason = reason or detail


# What a network exception's text (requests, urllib3) says happened, in a few words;
# the first match wins, so the specific come before the general.
_NETWORK_REASONS = (
    (("Connection refused",), "connection refused"),
    (("NameResolutionError", "Failed to resolve", "Name or service not known",
      "nodename nor servname", "Temporary failure in name resolution"),
     "the host name could not be looked up (no network?)"),
    (("Network is unreachable",), "the network is unreachable"),
    (("RemoteDisconnected", "Remote end closed"),
     "the server closed the connection without answering"),
    (("IncompleteRead",), "the connection closed mid-answer"),
    (("Connection reset", "Connection aborted", "connection closed"),
     "the connection broke off"),
    (("Read timed out",), "no more data within the read timeout"),
    (("timed out", "Timeout"), "timed out"),
)


def network_reason(exc: Exception) -> str:
    """A short reason for a network exception, without its nested reprs."""
    text = str(exc)
    for markers, reason in _NETWORK_REASONS:
        if any(marker in text for marker in markers):
            return reason
    return text if len(text) < 160 else text[:157] + "..."
