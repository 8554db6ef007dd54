"""The generate stage: a queue of (nation, category, count) -> txt2img PNGs.

Image n of (nation, category) is
``<root>/GENERATIONS/<Nation>/<category>/<Nation>_<category>_<n>.png``; its seed
comes from its file name, so every run and every Mac sends the identical request
for the same file, and asking for a larger count makes only the missing ones.

An image rejected in review (curate/verdicts.py) is not done: its job sets it aside into
REJECTED/ with what was made from it, and makes the next take, whose seed comes from
the file name and the take number, fixed when the job is claimed (curate/takes.py).
"""

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from drawpipe.curate.takes import Takes, seed_for
from drawpipe.drawthings import api as drawthings
from drawpipe.drawthings import backends
from drawpipe.drawthings.backends import ServerSettings
from drawpipe.drawthings.payloads import (Override, check_payload, effective_parameters,
                                          fill_prompt, load_payload, override_payloads)
from drawpipe.drawthings.provenance import provenance_chunks
from drawpipe.drawthings.signposts import PHASE_COLUMNS, phase_columns
from drawpipe.engine.jobs import Job, JobResult, WorkerContext
from drawpipe.layout import GENERATIONS_FOLDER, cutouts_path, image_name, upscaled_path
from drawpipe.png import add_text_chunks
from drawpipe.stages.prompts import PromptSets, QueueItem
from drawpipe.stages.server import ServerStage


@dataclass(frozen=True)
class Template:
    """The txt2img template a run sends: checked, with any ``--set`` overrides applied."""

    path: Path
    payload: dict  # request keys, notes removed
    warnings: tuple[str, ...]  # what the app would do without a word
    overrides: tuple[Override, ...] = ()

    @property
    def source(self) -> str:
        """Names the template in messages: its file, and the --set options changing it."""
        if not self.overrides:
            return str(self.path)
        return f"{self.path} with {' '.join('--set ' + o.text for o in self.overrides)}"


def load_template(path: Path) -> Template:
    """The template file, checked (InputFileError naming it when the app would refuse it)."""
    payload, warnings = load_payload(path)
    return Template(Path(path), payload, tuple(warnings))


def with_overrides(template: Template, overrides: list[Override]) -> Template:
    """``template`` with ``--set KEY=VALUE`` values (payloads.override_payloads: the same
    rules as a recipe's), checked again as a whole."""
    if not overrides:
        return template
    overridden = override_payloads([template.payload], overrides, None, "generate.py")
    changed = Template(template.path, overridden.payloads[0], (), tuple(overrides))
    return replace(changed, warnings=tuple(check_payload(changed.payload, changed.source)))


@dataclass(frozen=True)
class Planned:
    """A generate job's context: which queue entry and prompt variant, and (fixed when
    the job is claimed) which take it makes."""

    nation: str
    category: str
    number: int
    prompt: str
    take: int | None = None


class GenerateStage(ServerStage):
    name = "generate"
    extra_columns = ("server",) + PHASE_COLUMNS

    def __init__(self, root: Path, queue: list[QueueItem], prompt_sets: PromptSets,
                 template: Template, server_settings: ServerSettings, seed_offset: int = 0,
                 on_warning: Callable[[str], None] | None = None,
                 takes: Takes | None = None,
                 on_notice: Callable[[str], None] | None = None):
        """``template``: checked, with any --set overrides (kept in each image's
        provenance) applied; ``on_warning(line)``: what the preflight finds the app
        would do without a word; ``takes``: the policy for rejected takes, with this
        Mac's hash cache (curate/takes.py); ``on_notice(line)``: a rejected take set aside."""
        self.root = root
        self.takes = takes or Takes(root)
        self.on_notice = on_notice
        self.on_warning = on_warning
        self.queue = queue
        self.prompt_sets = prompt_sets
        self.template = template
        self.server_settings = server_settings
        self.seed_offset = seed_offset

    def plan(self) -> list[Job]:
        """Every image of the queue (its seed is fixed when its job is claimed)."""
        jobs = []
        folder = self.root / GENERATIONS_FOLDER
        self.takes.reload()
        for item in self.queue:
            for number in range(1, item.count + 1):
                name = image_name(item.nation, item.category, number)
                output = folder / item.nation / item.category / name
                prompt = self.prompt_sets.prompt_for(item.nation, item.category, number)
                jobs.append(Job(key=output.relative_to(self.root).as_posix(), output=output,
                                context=Planned(item.nation, item.category, number, prompt)))
        return jobs

    def is_current(self, job: Job) -> bool:
        """An image is done unless a reviewer rejected the take that is there."""
        return not self.takes.is_rejected(job.key)

    def set_aside(self, job: Job) -> None:
        """Move the rejected take, and what upscale.py and segment.py made of it, into
        REJECTED/ (called with the job's claim held)."""
        upscaled = upscaled_path(self.root, job.output)
        take, moved = self.takes.set_aside_rejected(
            job.key, [upscaled, cutouts_path(self.root, upscaled)])
        if self.on_notice is not None and moved:
            self.on_notice(f"rejected: {job.key} (take {take}) moved to {', '.join(moved)}; "
                           f"making take {take + 1}")

    def claimed(self, job: Job) -> Job:
        """The job as it runs, its take and seed fixed now: with its claim held, after
        any rejected take was set aside."""
        take = self.takes.take_to_make(job.key)
        return replace(job, seed=seed_for(job.output.stem, self.seed_offset, take),
                       context=replace(job.context, take=take))

    def jobs_by_entry(self) -> list[tuple[QueueItem, list[Job]]]:
        """The plan grouped by queue entry, for --dry-run."""
        jobs = self.plan()
        grouped, start = [], 0
        for item in self.queue:
            grouped.append((item, jobs[start:start + item.count]))
            start += item.count
        return grouped

    def payload_for(self, job: Job) -> dict:
        payload = dict(self.template.payload)
        payload["prompt"] = fill_prompt(payload.get("prompt", ""), job.context.prompt)
        payload["seed"] = job.seed
        return payload

    def make_worker(self, server: str, context: WorkerContext):
        """Preflight the server (``GET /``, or gRPC's Echo and FilesExist) and return this
        worker's job runner; ``server``: an http(s):// or grpc(s):// URL."""
        client = self.open_client(server, context)
        app_configuration = backends.preflight(
            client, [(self.template.payload, self.template.source)], self.on_warning)
        expected_size = drawthings.output_size(
            effective_parameters(self.template.payload, app_configuration))

        def run(job: Job, scratch: Path) -> JobResult:
            payload = self.payload_for(job)  # job: as claimed (its take and seed fixed)
            answer = client.generate("txt2img", payload, expected_size,
                                     on_progress=lambda progress: context.activity(progress.text))
            png = add_text_chunks(answer.png, provenance_chunks(
                payload, overrides=[o.text for o in self.template.overrides],
                take=job.context.take))
            return JobResult(data=png, attempts=answer.attempts,
                             extra={"server": server, **phase_columns([answer.stage_seconds])})

        return run
