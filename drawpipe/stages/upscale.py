"""The upscale stage: every PNG under GENERATIONS/ -> a 2048 px PNG under UPSCALED_IMAGES/.

``<root>/GENERATIONS/<sub-folders>/<stem>.png`` becomes
``<root>/UPSCALED_IMAGES/<sub-folders>/<stem>_upscaled.png`` through a *recipe*: an
ordered list of img2img requests, the answer of one being the init image of the
next. Intermediate images stay in memory, never on the share; the engine
(engine/worker.py) writes only the final PNG, atomically.

A recipe file (``payloads/creative_upscale.json``, the default, and the others in
``payloads/``; README: "Choosing a recipe")::

    {
      "_about": "any key starting with _ is a note for people",
      "output_width": 2048, "output_height": 2048,      px the last step must return
      "steps": [
        {"name": "upscale 2x", "payload": {<img2img keys>}},
        {"name": "refine",     "payload": {<img2img keys>}}
      ]
    }

On every step the client sets ``init_images`` (the previous image as plain base64),
``seed`` and, unless the step fixes them, ``width``/``height`` from the init image
(Draw Things refuses an init image whose size differs from width x height). The
answer's size is predicted from the request (``drawthings.output_size``: the
upscaler multiplies it) and checked on arrival; before anything is sent, the
whole chain is predicted from the input's size and must end at the recipe's
output size.

The seed: every step of an image uses ``seed_for(<input stem>, seed_offset, take)``
(curate/takes.py), the same seed generate.py used for that take of the image, fixed
when the job is claimed. One number per image is what the
metrics' ``seed`` column and the infotext can hold, so any step can be re-run by
hand from the output's metadata; the seed is stable across recipes (the fast and
the creative recipe get the same noise, so they compare like for like); and it
is what A1111's hires fix does for its second pass. Steps at strength 0 (the
upscaler step) draw no noise at all.

Inputs are checked before anything is sent (``inspect_png``: PNG signature, chunk
list up to IEND, ``Image.verify()``, pixel size). A file that looks half-written
(a PNG start without its end, or damaged) and was modified within
``settle_seconds`` is *deferred* (errors.JobDeferred: tried again on a later
pass); older, or not a PNG at all, it is *bad* (errors.BadInput): reported, never
sent. ``plan()`` screens inputs cheaply (size, first 8 and last 12 bytes) and leaves
clearly unusable files out of the plan, listing them in ``UpscaleStage.skipped``.
"Modified within" is judged on the file server's clock (the engine's
``WorkerContext.server_now``, as claims do): the file's mtime was stamped by the
server, and this Mac's clock may be minutes off.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pybase64

from drawpipe.curate.takes import Takes, recorded_take, seed_for
from drawpipe.drawthings import api as drawthings
from drawpipe.drawthings import backends
from drawpipe.drawthings.backends import ServerSettings
from drawpipe.drawthings.payloads import (Override, check_payload, effective_parameters,
                                          override_payloads, read_json_file, without_notes)
from drawpipe.drawthings.provenance import provenance_chunks
from drawpipe.drawthings.signposts import PHASE_COLUMNS, phase_columns
from drawpipe.engine.jobs import Job, JobResult, WorkerContext
from drawpipe.errors import (BadInput, InputFileError, JobDeferred, JobFailed, ServerRejected,
                             TransientError)
from drawpipe.files import output_exists, scan_inputs
from drawpipe.layout import GENERATIONS_FOLDER, UPSCALED_FOLDER, upscaled_path
from drawpipe.png import (IEND_CHUNK, PNG_SIGNATURE, PngCheck, add_text_chunks, inspect_png,
                          png_size)
from drawpipe.settings import default
from drawpipe.stages.server import ServerStage

DEFAULT_OUTPUT_SIZE = (2048, 2048)
# An incomplete input younger than this is waited for; older, it is reported as damaged.
DEFAULT_SETTLE_SECONDS = default("settle_seconds")

# Keys the chain sets on every request, with why a recipe must not set them.
CHAIN_KEYS = {
    "init_images": "the chain sets init_images (the input, then each step's answer)",
    "seed": "the seed comes from each input's file name (use --seed-offset for another take)",
}
_RECIPE_KEYS = ("steps", "output_width", "output_height")
_STEP_KEYS = ("name", "payload")


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class RecipeStep:
    name: str
    payload: dict  # img2img keys, notes removed, validated; no init_images, no seed


@dataclass(frozen=True)
class Recipe:
    path: Path
    steps: tuple[RecipeStep, ...]
    output_size: tuple[int, int]  # (width, height) px the last step must return
    warnings: tuple[str, ...] = ()  # what the app would do without a word, per step
    overrides: tuple[Override, ...] = ()  # --set options applied to the steps
    override_steps: tuple[tuple[int, ...], ...] = ()  # per override: the steps it set

    @property
    def name(self) -> str:
        return self.path.name

    def where(self, number: int) -> str:
        """``"<file>: step 2 (refine 2048)"``: names a step in messages."""
        return f"{self.path}: step {number} ({self.steps[number - 1].name})"


def load_recipe(path: Path) -> Recipe:
    """A checked recipe; InputFileError naming the file (and the step) when malformed,
    or when a step would be refused or silently changed by the app (a LoRA or
    ControlNet of another model family than the step's model, say)."""
    path = Path(path)
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise InputFileError(f'{path}: a recipe must be a JSON object {{"steps": [...]}}')
    _check_known_keys(data, _RECIPE_KEYS, str(path))
    entries = data.get("steps")
    if not isinstance(entries, list) or not entries:
        raise InputFileError(
            f'{path}: "steps" must be a non-empty list of {{"name": ..., "payload": {{...}}}}')
    steps, warnings = [], []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise InputFileError(
                f'{path}: step {number} must be an object {{"name": ..., "payload": {{...}}}}')
        name = entry.get("name", f"step {number}")
        if not isinstance(name, str) or not name.strip():
            raise InputFileError(f'{path}: step {number}: "name" must be a non-empty string')
        where = f"{path}: step {number} ({name})"
        _check_known_keys(entry, _STEP_KEYS, where)
        template = entry.get("payload")
        if not isinstance(template, dict):
            raise InputFileError(f'{where}: "payload" must be a JSON object of img2img keys')
        payload = without_notes(template)
        for key, reason in CHAIN_KEYS.items():
            if key in payload:
                raise InputFileError(f'{where}: remove "{key}": {reason}')
        warnings += check_payload(payload, where)
        steps.append(RecipeStep(name, payload))
    output_size = (_output_side(data, "output_width", path, DEFAULT_OUTPUT_SIZE[0]),
                   _output_side(data, "output_height", path, DEFAULT_OUTPUT_SIZE[1]))
    return Recipe(path, tuple(steps), output_size, tuple(warnings))


def apply_overrides(recipe: Recipe, overrides: list[Override]) -> Recipe:
    """``recipe`` with ``--set`` values (payloads.override_payloads: a STEP:KEY override
    changes or adds KEY in that step, by name or number; a plain KEY override changes
    every step that sends KEY; UsageError when a step is not found or no step sends
    the key); each changed step is checked again like the recipe itself."""
    if not overrides:
        return recipe
    overridden = override_payloads([step.payload for step in recipe.steps], overrides,
                                   [step.name for step in recipe.steps], recipe.name)
    steps = tuple(RecipeStep(step.name, payload)
                  for step, payload in zip(recipe.steps, overridden.payloads))
    changed = Recipe(recipe.path, steps, recipe.output_size, (), tuple(overrides),
                     overridden.steps)
    warnings = []
    for number, step in enumerate(changed.steps, 1):
        warnings += check_payload(step.payload, f"{changed.where(number)} with --set")
    return replace(changed, warnings=tuple(warnings))


def _check_known_keys(data: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(key for key in data if not key.startswith("_") and key not in known)
    if unknown:
        raise InputFileError(
            f'{where}: unknown key "{unknown[0]}" (expected {", ".join(known)}; '
            'keys starting with "_" are notes)')


def _output_side(data: dict, key: str, path: Path, default: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 64 <= value <= 16384:
        raise InputFileError(f'{path}: "{key}" must be a whole number of pixels, 64..16384')
    return value


@dataclass(frozen=True)
class PlannedStep:
    number: int  # 1-based
    name: str
    payload: dict  # the request without init_images: template + seed + width/height
    expected_size: tuple[int, int]  # (width, height) px of the answer


def plan_chain(recipe: Recipe, input_size: tuple[int, int], seed: int,
               app_configuration: dict) -> list[PlannedStep]:
    """Every step's request (without its init image) and answer size, for an input of
    ``input_size`` (w, h) px. ValueError(reason) when this input cannot go through the
    recipe: a step would be refused for its size, or the chain would not end at the
    recipe's output size. ``app_configuration``: the server's GET / answer (keys a
    step leaves out, such as the upscaler, take its values).
    """
    size = tuple(input_size)
    planned = []
    for number, step in enumerate(recipe.steps, 1):
        payload = dict(step.payload)
        payload.setdefault("width", size[0])
        payload.setdefault("height", size[1])
        payload["seed"] = seed
        where = f"step {number} ({step.name})"
        if number == 1 and (payload["width"], payload["height"]) != size:
            raise ValueError(f"it is {size[0]}x{size[1]} px but {where} fixes "
                             f"{payload['width']}x{payload['height']}")
        try:
            size = drawthings.output_size(effective_parameters(payload, app_configuration))
        except drawthings.RequestRejected as exc:
            raise ValueError(f"{where} would be refused: {exc.reason}") from None
        planned.append(PlannedStep(number, step.name, payload, size))
    if size != recipe.output_size:
        raise ValueError(
            f"{recipe.name} makes {size[0]}x{size[1]} px from a {input_size[0]}x{input_size[1]} "
            f"px input, not the {recipe.output_size[0]}x{recipe.output_size[1]} it declares")
    return planned


# --------------------------------------------------------------------------- input checks


@dataclass(frozen=True)
class InputImage:
    data: bytes  # the file's bytes, exactly as read
    size: tuple[int, int]  # (width, height) px
    texts: dict  # its PNG text chunks, e.g. generate's "parameters"


def read_input(path: Path, label: str, settle_seconds: float,
               now: Callable[[], float] = time.time) -> InputImage:
    """Read an input PNG once and check it.

    Raises JobDeferred when it looks half-written and was modified within
    ``settle_seconds`` by ``now()`` (epoch seconds: the file server's clock, which
    stamped the mtime; another Mac's copy may be judged by a clock minutes off), and
    BadInput when it is not a usable PNG. ``label`` names the file in messages.
    Other OSErrors propagate: the engine tells a lost share from a busy file.
    """
    try:
        modified = os.stat(path).st_mtime
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{label} is gone (moved or deleted since the scan)") from None
    check = inspect_png(data)
    if check.problem is None:
        return InputImage(data, check.size, check.texts)
    age_seconds = now() - modified
    if check.incomplete and age_seconds < settle_seconds:
        raise JobDeferred(f"{label} looks half-written ({check.problem}; modified "
                          f"{max(0.0, age_seconds):.0f} s ago): tried again on a later pass")
    raise BadInput(f"{label} is not a usable PNG ({check.problem}): not sent; "
                   "replace or remove it")


# --------------------------------------------------------------------------- the stage


class UpscaleStage(ServerStage):
    """Every PNG under ``<root>/GENERATIONS`` through ``recipe`` into ``<root>/UPSCALED_IMAGES``.

    ``on_skipped(label, reason)``: called once per unusable input found by ``plan``
    (e.g. to print it); ``skipped`` maps each such input's root-relative path to the
    reason, as of the last plan. Non-PNG files are listed in ``ignored``.
    ``on_warning(line)``: what the preflight finds the app would do without a word.
    """

    name = "upscale"
    extra_columns = ("server", "recipe", "steps", "step_seconds",
                     "step_attempts") + PHASE_COLUMNS

    def __init__(self, root: Path, recipe: Recipe, server_settings: ServerSettings,
                 seed_offset: int = 0, settle_seconds: float = DEFAULT_SETTLE_SECONDS,
                 on_skipped: Callable[[str, str], None] | None = None,
                 on_warning: Callable[[str], None] | None = None,
                 takes: Takes | None = None):
        self.root = Path(root)
        self.on_warning = on_warning
        self.takes = takes or Takes(root)
        self.rejected: list[str] = []  # inputs rejected in review, as of the last plan
        self.recipe = recipe
        self.server_settings = server_settings
        self.seed_offset = seed_offset
        self.settle_seconds = settle_seconds
        self.on_skipped = on_skipped
        self.skipped: dict[str, str] = {}
        self.ignored: list[str] = []
        self._lock = threading.Lock()  # plan() runs in every worker thread under --watch
        self._screened: dict[Path, tuple[tuple, str | None]] = {}
        self._reported: set[tuple[str, str]] = set()
        # The file server's clock once a run lends one (make_worker); this Mac's before.
        self._now: Callable[[], float] = time.time

    @property
    def input_folder(self) -> Path:
        return self.root / GENERATIONS_FOLDER

    @property
    def output_folder(self) -> Path:
        return self.root / UPSCALED_FOLDER

    def output_for(self, input_path: Path) -> Path:
        return upscaled_path(self.root, input_path)

    def plan(self) -> list[Job]:
        """One job per PNG under GENERATIONS/, sorted by path; unusable inputs left out.

        Only inputs whose output is missing are screened (and each file once per
        size and mtime), so a re-plan costs a stat per input, not a read.
        """
        with self._lock:
            jobs, skipped, ignored, rejected = [], {}, [], []
            self.takes.reload()
            for path in scan_inputs(self.input_folder, suffixes=("",)):
                label = path.relative_to(self.root).as_posix()
                if path.suffix.lower() != ".png":
                    ignored.append(label)
                    continue
                if self.takes.made_from_rejected(path):
                    rejected.append(label)  # generate.py makes its next take
                    continue
                output = self.output_for(path)
                if not output_exists(output):
                    reason = self._screen(path)
                    if reason is not None:
                        skipped[label] = reason
                        continue
                jobs.append(Job(key=output.relative_to(self.root).as_posix(), output=output,
                                input=path))
            self.skipped, self.ignored, self.rejected = skipped, ignored, rejected
            new = [(label, reason) for label, reason in skipped.items()
                   if (label, reason) not in self._reported]
            self._reported.update(new)
        for label, reason in new:
            if self.on_skipped is not None:
                self.on_skipped(label, reason)
        return jobs

    def is_current(self, job: Job) -> bool:
        """The upscaled image was made from the input there now (or records nothing)."""
        return self.takes.is_current(job.output, job.input)

    def set_aside(self, job: Job) -> None:
        """Move an upscaled image made from an older input into REJECTED/ (claim held),
        numbered with the take of the input it was made from."""
        self.takes.set_aside_stale(job.key, job.output)

    def claimed(self, job: Job) -> Job:
        """The job as it runs, its seed fixed now (claim held): that of the take of the
        image there, the seed generate.py used for it; ``context``: that take."""
        take = self.takes.take_of_input(job.input)
        return replace(job, seed=seed_for(job.input.stem, self.seed_offset, take), context=take)

    def _screen(self, path: Path) -> str | None:
        """Why ``path`` is clearly unusable, or None to plan it (the job checks it fully).

        Reads 20 bytes (the signature and the IEND at the end); the whole file only
        when the end is not IEND. A file that may still be being written is planned:
        its job defers it until it is complete or older than settle_seconds.
        """
        try:
            stat = os.stat(path)
        except OSError:
            return None  # gone since the listing: the job will say so
        version = (stat.st_size, stat.st_mtime_ns)
        cached = self._screened.get(path)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            with open(path, "rb") as stream:
                head = stream.read(len(PNG_SIGNATURE))
                stream.seek(max(0, stat.st_size - len(IEND_CHUNK)))
                tail = stream.read(len(IEND_CHUNK))
                if head == PNG_SIGNATURE and tail == IEND_CHUNK:
                    check = PngCheck(None)  # the job verifies the CRCs
                else:
                    stream.seek(0)
                    check = inspect_png(stream.read())
        except OSError:
            return None
        if check.problem is not None and check.incomplete and (
                self._now() - stat.st_mtime < self.settle_seconds):
            return None  # may be being written: not cached, looked at again next plan
        self._screened[path] = (version, check.problem)
        return check.problem

    def make_worker(self, server: str, context: WorkerContext):
        """Preflight the server (``GET /``, or gRPC's Echo and FilesExist) and return this
        worker's job runner; ``server``: an http(s):// or grpc(s):// URL."""
        client = self.open_client(server, context)
        recipe = self.recipe
        app_configuration = backends.preflight(
            client, [(step.payload, recipe.where(number))
                     for number, step in enumerate(recipe.steps, 1)], self.on_warning)
        self._now = context.server_now

        def run(job: Job, scratch: Path) -> JobResult:
            label = job.input.relative_to(self.root).as_posix()
            source = read_input(job.input, label, self.settle_seconds, context.server_now)
            take = recorded_take(source.texts)  # what take_of_input reads, read once
            if take != job.context:  # job: as claimed, its take and seed fixed then
                raise JobDeferred(f"{label} was replaced since its job was claimed (take "
                                  f"{take}, not {job.context}): tried again on a later pass")
            try:
                chain = plan_chain(recipe, source.size, job.seed, app_configuration)
            except ValueError as exc:
                raise BadInput(f"{label} does not fit the recipe: {exc}; not sent") from None
            png = source.data
            seconds, attempts, stage_seconds = [], [], []
            for step in chain:
                where = f"step {step.number} ({step.name}) of {recipe.name}"
                doing = f"step {step.number} of {len(chain)} ({step.name})"
                context.activity(doing)
                request = dict(step.payload)
                # Plain base64, no data: prefix, no line breaks: what Draw Things expects.
                request["init_images"] = [pybase64.b64encode(png).decode("ascii")]
                try:
                    answer = client.generate(
                        "img2img", request, step.expected_size,
                        on_progress=lambda progress: context.activity(f"{doing}: {progress.text}"))
                except ServerRejected as exc:
                    raise exc.in_step(where) from None
                except JobFailed as exc:
                    # Same kind (a step that may still be drawing is not re-sent either).
                    failed = copy.copy(exc)
                    failed.args = (f"{where}: {exc}",)
                    raise failed from None
                del request
                png = answer.png
                seconds.append(answer.seconds)
                attempts.append(answer.attempts)
                stage_seconds.append(answer.stage_seconds)
            if png_size(png) != recipe.output_size:  # sdapi checked it; this guards the recipe
                raise TransientError(f"{label}: the last step returned {png_size(png)}, "
                                     f"not {recipe.output_size}")
            png = add_text_chunks(png, provenance(chain, label, source, recipe.overrides))
            return JobResult(data=png, attempts=max(attempts), extra={
                "server": server,
                "recipe": recipe.name,
                "steps": len(chain),
                "step_seconds": ";".join(f"{value:.3f}" for value in seconds),
                "step_attempts": ";".join(str(value) for value in attempts),
                **phase_columns(stage_seconds),
            })

        return run


def provenance(chain: list[PlannedStep], label: str, source: "InputImage",
               overrides: tuple[Override, ...] = ()) -> dict[str, str]:
    """PNG texts for an upscaled image.

    ``parameters``: the last step's infotext (what PNG-info tools show); ``drawpipe``:
    {"request": last step, "steps": [{"name", "request"}, ...], "overrides": the --set
    options, when any} without images; ``drawpipe-source``: {"input": root-relative
    path, "sha256": of the input's bytes (curate/takes.py: an upscaled image made from
    another input than the one there now is stale), "take": the input's take,
    "parameters": the input's own infotext (its prompt), when it had one}.
    """
    texts = provenance_chunks(chain[-1].payload, steps=[
        {"name": step.name, "request": step.payload} for step in chain],
        overrides=[override.text for override in overrides])
    record = {"input": label, "sha256": hashlib.sha256(source.data).hexdigest(),
              "take": recorded_take(source.texts)}
    if source.texts.get("parameters"):
        record["parameters"] = source.texts["parameters"]
    texts["drawpipe-source"] = json.dumps(record, sort_keys=True, ensure_ascii=False)
    return texts
