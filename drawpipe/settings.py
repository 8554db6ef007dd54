"""Every setting a user can give, declared once: name, kind, default, unit, help, profile.

Everything else comes from this table: the command-line flags (cli/options.py: one
flag each, ``--`` and the name with ``-``, unless ``flag`` says otherwise), the keys a
``drawpipe.toml`` profile may set (``profile=True``; cli/config.py checks them by
kind), the defaults of the settings dataclasses (cli/common.py CommonSettings,
engine/loop.py EngineSettings, drawthings/client.py ClientSettings, sam/settings.py
GeneratorSettings and CutoutSettings, sam/objects.py ObjectRules, sam/labels.py
LabelSettings) and README's option lists
(tests/test_settings.py holds them equal to this table).

    SETTINGS[name]     the Setting
    default(name)      its default value
    help_text(name)    its help, the default filled in
    PROFILE_SETTINGS   the names a profile may set, in the table's order
    SHARE, RUN, SERVER, WATCH, GLANCE, QUARANTINE, GENERATOR, OBJECTS, LABELS, CUTOUTS   the
                       groups commands take

Kinds (how a value is read from a flag and checked in a profile):

    folder    a path                       profile: "a folder path"
    file      a path                       profile: "a file path"
    text      text                         profile: "text" (where the setting allows)
    process   a process name               profile: "a process name"
    urls      repeatable URL               profile: "a list of URLs"
    seconds   a number of seconds, > 0     profile: "a number of seconds"
    count     a whole number, >= 0         profile: "a whole number"
    integer   a whole number               profile: "a whole number"
    number    a decimal number             profile: "a number"
    switch    on when given                (command line only)
    choice    one of ``choices``           profile: "one of ..."

A default of None means "worked out when the command runs"; the help says how.
"""

from dataclasses import dataclass

# Draw Things' API server on this Mac (its default port, drawthings/api.py DEFAULT_PORT).
DEFAULT_SERVER = "http://127.0.0.1:7860"

KINDS = ("folder", "file", "text", "process", "urls", "seconds", "count", "integer", "number",
         "switch", "choice")


@dataclass(frozen=True)
class Setting:
    name: str  # the Python name and the profile key, e.g. "lease_seconds"
    kind: str  # one of KINDS
    default: object  # None: worked out at run time
    help: str  # "{default}" is replaced by the default; "{folder}" by what the command says
    unit: str = ""  # "s", "px", "points", "fraction", ...: what a number counts
    profile: bool = False  # a drawpipe.toml profile may set it
    metavar: str | None = None
    flag: str | None = None  # when not "--" + the name with "-"
    choices: tuple[str, ...] = ()

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


def _table(*settings: Setting) -> dict[str, Setting]:
    return {setting.name: setting for setting in settings}


SETTINGS: dict[str, Setting] = _table(
    # ------------------------------------------------------------ the share (every command)
    Setting("root", "folder", None, "the (shared) folder holding GENERATIONS/, UPSCALED_IMAGES/, "
            "CUTOUTS/, logs/ (default: the profile's, else the project folder: the checkout for its "
            "generate.py, upscale.py and segment.py, the current folder for every other form)", profile=True, metavar="FOLDER"),
    Setting("profile", "text", None, "a [profiles.NAME] of drawpipe.toml", metavar="NAME"),
    Setting("config", "text", None, "config file (default: $DRAWPIPE_CONFIG, else drawpipe.toml "
            "in the project folder)", metavar="FILE"),
    # ------------------------------------------------------------ a run of a stage
    Setting("lease_seconds", "seconds", 120.0, "a claim not refreshed for this long is taken "
            "over (default {default})", unit="s", profile=True, metavar="S"),
    Setting("poll_seconds", "seconds", 5.0, "wait between passes while others hold the "
            "remaining jobs (default {default})", unit="s", profile=True, metavar="S"),
    Setting("dry_run", "switch", False, "show what would be done, what is done, what is "
            "claimed; contact no server, write nothing"),
    Setting("no_progress", "switch", False, "log one line per job instead of a progress bar"),
    Setting("watch", "switch", False, "keep polling {folder} for new images until Ctrl-C"),
    Setting("watch_retry_seconds", "seconds", 60.0, "with --watch, a failed job is tried again "
            "after S seconds, doubling each time up to 30 minutes (default {default})",
            unit="s", metavar="S"),
    # ------------------------------------------------------------ Draw Things servers
    Setting("servers", "urls", (DEFAULT_SERVER,), "Draw Things API server: http://HOST:PORT, "
            "or grpc://HOST:PORT (grpcs:// with TLS) for its gRPC API; repeat for one "
            "worker per server (default: {default})", profile=True, metavar="URL",
            flag="--server"),
    Setting("connect_timeout_seconds", "seconds", 5.0, "how long to wait for a connection to "
            "the server (default {default})", unit="s", profile=True, metavar="S"),
    Setting("read_timeout_seconds", "seconds", 1800.0, "how long one request may take; over "
            "gRPC, how long the server may stay silent (at most 600 s once it streams) "
            "(default {default})", unit="s", profile=True, metavar="S"),
    Setting("retries", "count", 4, "retries of a transient failure before a job fails "
            "(default {default})", profile=True, metavar="N"),
    Setting("backoff_seconds", "seconds", 2.0, "first wait before a retry; doubles each time, "
            "capped at 60 (default {default})", unit="s", profile=True, metavar="S"),
    Setting("server_process_name", "process", "Draw Things", "process whose CPU and RAM are "
            "logged when the server is local (default '{default}')", profile=True,
            metavar="NAME"),
    # gRPC servers only (drawthings/grpc_client.py). The secret itself is never a setting:
    # not on the command line (other users see it in the process list), not in
    # drawpipe.toml (often readable by everyone, copied to other Macs, kept in git).
    Setting("shared_secret_env", "text", None, "grpc:// servers: the environment variable "
            "holding their shared secret (the secret is never given on the command line)",
            profile=True, metavar="NAME"),
    Setting("certificate", "file", None, "grpcs:// servers: the certificate (PEM) to trust, "
            "the server's own or its root (default: Draw Things' root, which the app and "
            "gRPCServerCLI serve)", profile=True, metavar="FILE"),
    Setting("tls_server_name", "text", "localhost", "grpcs:// servers: the name their "
            "certificate must carry (default {default}, as Draw Things' own)", profile=True,
            metavar="NAME"),
    # ------------------------------------------------------------ the night at a glance
    Setting("notify_urls", "urls", (), "POST a message to URL when the run ends, a worker "
            "retires, a server or the share is lost; repeatable", profile=True, metavar="URL",
            flag="--notify"),
    Setting("notify_format", "choice", "json", "the messages' body: json, ntfy, or slack/discord "
            "(incoming webhooks) (default {default})", profile=True,
            choices=("json", "ntfy", "slack", "discord")),
    Setting("notify_desktop", "switch", False, "on macOS, also a Notification Center banner for "
            "each message"),
    Setting("status_seconds", "seconds", 5.0, "rewrite this run's status file in .drawpipe/status/ "
            "every S seconds (default {default})", unit="s", profile=True, metavar="S"),
    Setting("max_consecutive_failures", "count", 3, "a server whose jobs fail N times in a row is "
            "quarantined: no new job until it answers GET / again (default {default})",
            profile=True, metavar="N"),
    Setting("max_failing_seconds", "seconds", 600.0, "... or whose jobs keep failing for S seconds "
            "(default {default})", unit="s", profile=True, metavar="S"),
    Setting("probe_seconds", "seconds", 30.0, "a quarantined server (or one asleep at start) is "
            "asked again after S seconds, doubling up to 10 minutes (default {default})",
            unit="s", profile=True, metavar="S"),
    Setting("retire_after_seconds", "seconds", 3600.0, "without --watch, a server quarantined this "
            "long stops being asked, so the run can end (default {default})", unit="s",
            profile=True, metavar="S"),
    # ------------------------------------------------------------ generate, upscale
    Setting("seed_offset", "integer", 0, "added to every file-name seed, for a different take "
            "(default {default})", profile=True, metavar="N"),
    Setting("settle_seconds", "number", 60.0, "an incomplete input modified less than S seconds "
            "ago is waited for; older, it is reported as damaged (default {default})",
            unit="s", metavar="S"),
    # ------------------------------------------------------------ segment
    Setting("device", "choice", "auto", "auto: mps on Apple Silicon, cuda where present, else "
            "cpu", choices=("auto", "mps", "cuda", "cpu")),
    Setting("precision", "choice", "auto", "auto: float32 (the masks SAM gives)",
            choices=("auto", "float32", "bfloat16", "float16")),
    # segment-anything's SamAutomaticMaskGenerator, named as in its scripts/amg.py
    Setting("points_per_side", "integer", 32, "grid points along each side (default {default})",
            unit="points", metavar="N"),
    Setting("points_per_batch", "integer", None, "grid points per decoder batch (default: from "
            "free memory)", unit="points", metavar="N"),
    Setting("pred_iou_thresh", "number", 0.88, "keep masks with predicted IoU above this "
            "(default {default})", metavar="X"),
    Setting("stability_score_thresh", "number", 0.95, "keep masks at least this stable "
            "(default {default})", metavar="X"),
    # the whole level (SAM's largest mask of a point) for objects: sam/settings.py
    # GeneratorSettings says why its stability threshold is lower than SAM's
    Setting("whole_pred_iou_thresh", "number", 0.88, "objects: keep a whole-level mask with "
            "predicted IoU above this (default {default})", metavar="X"),
    Setting("whole_stability_score_thresh", "number", 0.7, "objects: keep a whole-level mask "
            "at least this stable (default {default})", metavar="X"),
    Setting("stability_score_offset", "number", 1.0, "logit offset of the stability score "
            "(default {default})", metavar="X"),
    Setting("box_nms_thresh", "number", 0.7, "box IoU above which duplicates are dropped "
            "(default {default})", metavar="X"),
    Setting("crop_n_layers", "integer", 0, "also run on 2^i x 2^i crops, i = 1..N "
            "(default {default})", metavar="N"),
    Setting("min_mask_region_area", "integer", 0, "remove islands and holes smaller than this, "
            "px (default {default})", unit="px", metavar="N"),
    # objects and their parts (sam/objects.py ObjectRules says how they were measured)
    Setting("granularity", "choice", "objects", "objects: the things, each one's parts listed "
            "in cutouts.json; parts: every mask SAM keeps, side by side; all: objects, and each "
            "one's parts cut out into a sub-folder (default {default})",
            choices=("objects", "parts", "all")),
    Setting("part_inside_fraction", "number", 0.85, "a mask with this fraction of its area "
            "inside a larger object is a part of it (default {default})", unit="fraction",
            metavar="X"),
    Setting("duplicate_iou", "number", 0.85, "a mask this close to an object or part (IoU) is "
            "the same thing (default {default})", metavar="X"),
    Setting("redo_cutouts", "switch", False, "remake cut-out folders made with other settings "
            "(another --granularity or labelling); the old ones are set aside into REJECTED/"),
    # names (sam/labels.py)
    Setting("label", "switch", False, "name every cut-out with a zero-shot image-text model "
            "(open_clip); background (wall, sky ...) leaves the objects"),
    Setting("labels", "text", None, "the vocabulary: one name a line, \"stuff: NAME\" for "
            "background (default: the bundled one)", metavar="FILE"),
    Setting("label_model", "choice", None, "the label model (default: named in "
            "--label-checkpoint's file name, else ViT-B-32)",
            choices=("ViT-B-32", "MobileCLIP-S2")),
    Setting("label_threshold", "number", 0.5, "a name at least this probable is trusted, and "
            "stuff words together at least this probable make background (default {default})",
            unit="fraction", metavar="X"),
    # the cut-outs made of the masks
    Setting("min_area_fraction", "number", 0.001, "drop masks smaller than this fraction of the "
            "image (default {default})", unit="fraction", metavar="X"),
    Setting("max_cutouts", "integer", None, "at most N per image, largest first (default: all)",
            metavar="N"),
    Setting("keep_background", "switch", False, "keep masks whose box touches all four edges "
            "(dropped as background by default)"),
    Setting("margin", "number", 0.05, "space around the object as a fraction of its longer side "
            "(default {default})", unit="fraction", metavar="X"),
    # ------------------------------------------------------------ report, review page
    Setting("eta_window_minutes", "number", 60.0, "the ETA's rate is measured over the last M "
            "minutes of each stage's log (default {default})", unit="min", metavar="M"),
    Setting("grid_intensity", "number", None, "your grid's carbon intensity, grams of CO2e "
            "per kWh: adds CO2e to the energy figures (no default: no figure fits every "
            "grid)", unit="gCO2e/kWh", profile=True, metavar="G"),
    Setting("refresh_seconds", "seconds", 5.0, "with --watch, draw the screen again every S "
            "seconds (default {default})", unit="s", metavar="S"),
    Setting("host", "text", "127.0.0.1", "address to listen on (default {default}: this Mac "
            "only)", metavar="ADDRESS"),
    Setting("port", "integer", 8765, "port (default {default}; 0 picks a free one)",
            metavar="N"),
)

# The groups of settings commands take (each command's cli module names its own).
SHARE = ("root", "profile", "config")
RUN = ("lease_seconds", "poll_seconds", "dry_run", "no_progress")
SERVER = ("servers", "connect_timeout_seconds", "read_timeout_seconds", "retries",
          "backoff_seconds", "server_process_name", "shared_secret_env", "certificate",
          "tls_server_name")
WATCH = ("watch", "watch_retry_seconds")
# Every stage: its status file and messages; the server stages: their servers' quarantine.
GLANCE = ("notify_urls", "notify_format", "notify_desktop", "status_seconds")
QUARANTINE = ("max_consecutive_failures", "max_failing_seconds", "probe_seconds",
              "retire_after_seconds")
GENERATOR = ("points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh",
             "whole_pred_iou_thresh", "whole_stability_score_thresh", "stability_score_offset",
             "box_nms_thresh", "crop_n_layers", "min_mask_region_area")
OBJECTS = ("granularity", "part_inside_fraction", "duplicate_iou", "redo_cutouts")
LABELS = ("label", "labels", "label_model", "label_threshold")
CUTOUTS = ("min_area_fraction", "max_cutouts", "keep_background", "margin")

PROFILE_SETTINGS = tuple(name for name, setting in SETTINGS.items() if setting.profile)


def default(name: str):
    """The default of setting ``name`` (KeyError for a name not in the table)."""
    return SETTINGS[name].default


def format_value(value) -> str:
    """A default as help and README show it: 120.0 -> "120", 0.88 -> "0.88", a tuple
    of URLs -> them, ", "-separated."""
    if isinstance(value, (tuple, list)):
        return ", ".join(format_value(item) for item in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_text(name: str, **values: str) -> str:
    """The help of setting ``name``, its default filled in (and ``values``, e.g. folder)."""
    setting = SETTINGS[name]
    return setting.help.format(default=format_value(setting.default), **values)
