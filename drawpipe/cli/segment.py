"""Cut every object out of the upscaled images with Segment Anything, resumably, on one or more Macs.

Every PNG under ROOT/UPSCALED_IMAGES/ becomes a folder ROOT/CUTOUTS/<same sub-folders>/<stem>/
of square transparent PNGs, one per object (<stem>_cutout_<k>.png, largest first), and
cutouts.json (bbox, area, scores, outline polygons of each, and each object's parts).

Granularity: "objects" (default) cuts out the things - a person, a bus - and lists
their parts (a coat, a wheel) in cutouts.json; "parts" cuts out every mask SAM keeps
(things, parts and sub-parts side by side, as drawpipe did before); "all" cuts out
objects, and each object's parts into <stem>_cutout_<k>_parts/.

--label names every cut-out (a zero-shot image-text model against a vocabulary: the
bundled one, or --labels FILE); one named as background (wall, sky, road ...) is
listed in cutouts.json but not cut out, and its parts become objects. Folders made
with another granularity or other labels are left as they are unless --redo-cutouts
is given (the old folder goes to REJECTED/CUTOUTS/..., nothing is deleted).

Examples:
  python segment.py --root SHARE --checkpoint sam_vit_h_4b8939.pth
  python segment.py --root SHARE --download        # vit_b, fetched into the cache
  python segment.py --model vit_t --download       # MobileSAM: 39 MB, quick on a Mac
  python segment.py --model vit_l --download --device mps   # the cache's sam_vit_l_0b3195.pth
  python segment.py --granularity parts --redo-cutouts      # every piece, as before
  python segment.py --model vit_t --label --download        # named objects (ViT-B-32, 605 MB)
  python segment.py --label --labels my_names.txt --redo-cutouts   # another vocabulary
  python segment.py --points-per-side 16 --max-cutouts 12 --watch
  python segment.py --dry-run                               # to do, done, claimed by whom
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from drawpipe.cli.common import (PlanWords, check_positive, job_states, local_takes,
                                 made_again_from_a_new_input, print_plan, print_rejected,
                                 print_watching, resolve_settings, run_and_summarise, script_main,
                                 share_errors)
from drawpipe.cli.options import add_setting_arguments
from drawpipe.engine.jobs import job_done
from drawpipe.errors import CheckpointError, UsageError
from drawpipe.files import default_cache_dir
from drawpipe.layout import CUTOUTS_FOLDER, UPSCALED_FOLDER
from drawpipe.sam.checkpoints import OFFICIAL_CHECKPOINTS
from drawpipe.settings import CUTOUTS, GENERATOR, GLANCE, LABELS, OBJECTS, RUN, SHARE, WATCH
from drawpipe.settings import SETTINGS as TABLE

# drawpipe/settings.py: the flags it takes (no server: SAM runs on this Mac)
SETTINGS = (("device", "precision") + GENERATOR + OBJECTS + LABELS + CUTOUTS + WATCH + SHARE + RUN
            + GLANCE)


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", metavar="FILE", help="SAM weights (default: the "
                        "official file of --model in the cache folder)")
    parser.add_argument("--model", choices=tuple(OFFICIAL_CHECKPOINTS),
                        help="vit_h, vit_l, vit_b (SAM) or vit_t (MobileSAM); default: "
                             "named in the checkpoint's file name, else vit_b")
    add_setting_arguments(parser, ("device", "precision"))
    parser.add_argument("--download", action="store_true", help="fetch the official "
                        "checkpoint (and, with --label, the label model) if missing "
                        "(resumable, SHA-256 checked)")
    parser.add_argument("--download-from", metavar="URL", help="a mirror holding the "
                        "official file names (default: the official addresses)")
    parser.add_argument("--cache-dir", metavar="FOLDER", help="checkpoints go to FOLDER/sam/, "
                        "label models to FOLDER/labels/ (default $DRAWPIPE_CACHE_DIR, else "
                        "~/.cache/drawpipe)")
    add_setting_arguments(parser, GENERATOR + OBJECTS, folder=UPSCALED_FOLDER + "/")
    add_setting_arguments(parser, LABELS)
    parser.add_argument("--label-checkpoint", metavar="FILE", help="the label model's weights "
                        "(default: the official file of --label-model in the cache folder)")
    add_setting_arguments(parser, CUTOUTS + WATCH, folder=UPSCALED_FOLDER + "/")
    parser.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)  # make demo
    add_setting_arguments(parser, SHARE + RUN + GLANCE)
    return parser.parse_args(argv)


def run(args, project_dir: Path, stdin=None, stdout=None) -> int:
    """segment.py: every PNG under <root>/UPSCALED_IMAGES -> a folder of SAM cut-outs in CUTOUTS."""
    from drawpipe.sam.settings import ModelSettings
    from drawpipe.stages.segment import SegmentStage

    stdout = stdout or sys.stdout
    settings = resolve_settings(args, project_dir, SETTINGS, stdin, stdout)
    cache_root = (Path(args.cache_dir).expanduser() if args.cache_dir
                  else default_cache_dir(os.environ))
    cache_dir = cache_root / "sam"
    generator = _generator_settings(settings.values)
    cutouts = _cutout_settings(settings.values)
    rules = _object_rules(settings.values)
    # The vocabulary is read and the label model's file found before anything is loaded.
    labelling = _labelling(args, settings.values, cache_root)
    if args.demo and args.points_per_side is None:
        # A 32 x 32 grid takes minutes per image on a CPU; 16 x 16 shows the step.
        generator = dataclasses.replace(generator, points_per_side=16)
    model_type, checkpoint = _model_files(args, settings, cache_dir, labelling, stdout)
    if checkpoint is None:
        return 0  # make demo without a checkpoint to be had: the step is skipped, said why
    model = ModelSettings(model_type, checkpoint, settings.values["device"],
                          settings.values["precision"])
    takes = local_takes(settings.root)
    granularity, redo = settings.values["granularity"], settings.values["redo_cutouts"]
    stage = SegmentStage(settings.root, model, generator, cutouts, takes, granularity,
                         redo_other_settings=redo, rules=rules, labelling=labelling)
    output_folder = settings.root / CUTOUTS_FOLDER
    with share_errors(settings.root):
        jobs = stage.plan()
        other_settings = _made_with_other_settings(stage, jobs)
    if settings.dry_run:
        _print_dry_run(stage, jobs, settings, checkpoint, labelling, other_settings, stdout)
        return 0
    device = model.device
    label_device = labelling.settings.device if labelling is not None else None
    with share_errors(settings.root):
        something_to_do = any(not job_done(stage, job) for job in jobs)
    if something_to_do:
        # Load now: a bad checkpoint stops the run before any claim is taken. Loaded once;
        # every job of this process uses it.
        device = stage.segmenter().device
        if labelling is not None:
            label_device = stage.labeller().device
    print(f"SAM {model_type} from {checkpoint} on {device}, "
          f"{generator.points_per_side} x {generator.points_per_side} points, "
          f"granularity {granularity}", file=stdout)
    if labelling is not None:
        print(_labelling_line(labelling, label_device), file=stdout)
    _print_other_settings(other_settings, stage, redo, stdout)
    print_watching(settings.root / UPSCALED_FOLDER, settings, stdout)
    summary = run_and_summarise(stage, settings, takes, stdout)
    print_rejected(stage.rejected, stdout)
    _print_empty(stage.empty, stdout)
    if not redo:
        _print_other_settings(other_settings, stage, False, stdout)
    print(f"cut-outs are in {output_folder}", file=stdout)
    return summary.exit_code


def _model_files(args, settings, cache_dir: Path, labelling, out) -> tuple[str, Path | None]:
    """(model type, SAM checkpoint) for this run, each file it needs there: every missing
    one named before anything is fetched or loaded, then fetched with --download (SAM's
    and the label model's). (type, None) when make demo can have no checkpoint."""
    from drawpipe.sam.checkpoints import download_checkpoint
    from drawpipe.sam.models import MODEL_TYPES, missing_checkpoint_message

    if args.demo:
        model_type, checkpoint = _demo_checkpoint(args, cache_dir, out)
        if checkpoint is None:
            return model_type, None
    else:
        model_type, checkpoint = _segment_checkpoint(args.model, args.checkpoint, cache_dir)
    if settings.dry_run:
        return model_type, checkpoint  # nothing is fetched; the dry run says what is missing
    if not args.download:
        if not checkpoint.is_file():
            raise CheckpointError(missing_checkpoint_message(model_type, checkpoint))
        if labelling is not None:
            _check_label_model(labelling)
    official = MODEL_TYPES[model_type].official
    if not checkpoint.is_file() and args.download:
        if official is None:
            raise UsageError(f"--download: {model_type} has no published checkpoint")
        url = official.address(args.download_from)
        print(f"downloading {url} -> {checkpoint}", file=out, flush=True)
        download_checkpoint(url, checkpoint, official.sha256, show_progress=settings.show_progress)
    if not checkpoint.is_file():
        raise CheckpointError(missing_checkpoint_message(model_type, checkpoint))
    if labelling is not None:
        _download_label_model(labelling, args.download_from, settings.show_progress, out)
    return model_type, checkpoint


def _print_dry_run(stage, jobs, settings, checkpoint: Path, labelling, other_settings,
                   out) -> None:
    """What a run would do (to segment, done, claimed, to redo), and what is missing."""
    output_folder = settings.root / CUTOUTS_FOLDER
    states = job_states(settings.root, stage, jobs, settings.lease_seconds)
    words = PlanWords("segment", "claimed", "to redo", _why_redo(stage))
    counts = print_plan([(None, jobs, states)], words, out)
    waiting = (f", {len(stage.rejected)} rejected in review (cut out once generate.py and "
               "upscale.py have made their next take)" if stage.rejected else "")
    print(f"dry run: {counts.to_do} image(s) to segment into {output_folder}, "
          f"{counts.done} already done{waiting}; nothing was loaded or written"
          + ("" if checkpoint.is_file() else f" (the checkpoint {checkpoint} is missing)")
          + ("" if labelling is None or Path(labelling.settings.checkpoint).is_file()
             else f" (the label model {labelling.settings.checkpoint} is missing)"),
          file=out)
    _print_other_settings(other_settings, stage, settings.values["redo_cutouts"], out)


def _why_redo(stage):
    """The dry run's reason to redo a job: made from an older input, or (--redo-cutouts)
    made with other settings."""
    from drawpipe.stages.segment import describe_made_with

    def explain(job) -> str:
        other = stage.made_with_other_settings(job)
        if other is None or not stage.takes.is_current(job.output, job.input):
            return made_again_from_a_new_input(job)
        return (f"made with {describe_made_with(other)}: it will be set aside to REJECTED/ and "
                f"made again with {describe_made_with(stage.made_with())}")

    return explain


def _made_with_other_settings(stage, jobs) -> dict[str, int]:
    """How many existing cut-out folders were made with other settings, by what they
    were made with (in words: "granularity parts, no labels")."""
    from drawpipe.stages.segment import describe_made_with

    counts: dict[str, int] = {}
    for job in jobs:
        made_with = stage.made_with_other_settings(job)
        if made_with is not None:
            text = describe_made_with(made_with)
            counts[text] = counts.get(text, 0) + 1
    return counts


def _print_other_settings(counts: dict[str, int], stage, redo: bool, out) -> None:
    """One line: how many folders were made with other settings, and what becomes of them."""
    if not counts:
        return
    total = sum(counts.values())
    from drawpipe.stages.segment import describe_made_with

    made = "; ".join(f"{count} with {text}" for text, count in sorted(counts.items()))
    wanted = describe_made_with(stage.made_with())
    if redo:
        print(f"{total} cut-out folder(s) made with other settings ({made}) will be remade "
              f"with {wanted}; the old ones go to REJECTED/", file=out)
    else:
        print(f"{total} cut-out folder(s) made with other settings ({made}) are kept as "
              f"they are; add --redo-cutouts to remake them with {wanted} (the old ones go to "
              "REJECTED/)", file=out)


def _generator_settings(values: dict):
    """GeneratorSettings from the resolved settings (SAM's defaults where none was given)."""
    from drawpipe.sam.settings import GeneratorSettings

    chosen = {name: values[name] for name in GENERATOR}
    if chosen["crop_n_layers"] > 0 and values["granularity"] != "parts":
        raise UsageError("--crop-n-layers needs --granularity parts: objects are told from "
                         "their parts on the whole image, in one pass of the encoder")
    for name in ("points_per_side", "points_per_batch"):
        if chosen[name] is not None:
            check_positive(chosen[name], "--" + name.replace("_", "-"))
    for name in ("crop_n_layers", "min_mask_region_area"):
        if chosen[name] < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more, got {chosen[name]}")
    return GeneratorSettings(**chosen)


def _cutout_settings(values: dict):
    """CutoutSettings from the resolved settings, checked."""
    from drawpipe.sam.settings import CutoutSettings

    margin, min_area_fraction = values["margin"], values["min_area_fraction"]
    if not 0 <= margin <= 1:
        raise UsageError(f"--margin is a fraction of the object's size, 0 to 1; got {margin:g}")
    if not 0 <= min_area_fraction < 1:
        raise UsageError(f"--min-area-fraction must be 0 or more and below 1, got "
                         f"{min_area_fraction:g}")
    if values["max_cutouts"] is not None:
        check_positive(values["max_cutouts"], "--max-cutouts")
    return CutoutSettings(margin_fraction=margin, min_area_fraction=min_area_fraction,
                          max_cutouts=values["max_cutouts"],
                          keep_background=values["keep_background"])


def _object_rules(values: dict):
    """ObjectRules from the resolved settings, checked (specks as the cut-outs' rule)."""
    from drawpipe.sam.objects import ObjectRules

    for name in ("part_inside_fraction", "duplicate_iou"):
        if not 0 < values[name] <= 1:
            raise UsageError(f"--{name.replace('_', '-')} is a fraction, above 0 and at most 1; "
                             f"got {values[name]:g}")
    return ObjectRules(part_inside_fraction=values["part_inside_fraction"],
                       duplicate_iou=values["duplicate_iou"],
                       min_area_fraction=values["min_area_fraction"])


# The label settings that mean nothing without --label.
LABEL_OPTIONS = ("labels", "label_model", "label_checkpoint", "label_threshold")


def _labelling(args, values: dict, cache_root: Path):
    """stages.segment.Labelling for --label (None without it): the vocabulary read and
    checked (--labels FILE, else the bundled one), the label model named (--label-model,
    else the one --label-checkpoint's file name says, else the default) and its file
    (--label-checkpoint, else the official file in <cache>/labels/); nothing loaded."""
    from drawpipe.sam.labels import (DEFAULT_LABEL_MODEL, LABEL_MODELS, LabelSettings,
                                     default_vocabulary, label_model_for, label_model_path,
                                     read_vocabulary)
    from drawpipe.stages.segment import Labelling

    if not values["label"]:
        given = [name for name in LABEL_OPTIONS if getattr(args, name) is not None]
        if given:
            flags = ", ".join(_flag(name) for name in given)
            raise UsageError(f"{flags}: only with --label (they say how cut-outs are named)")
        return None
    threshold = values["label_threshold"]
    if not 0 <= threshold <= 1:
        raise UsageError(f"--label-threshold is a probability, 0 to 1; got {threshold:g}")
    vocabulary = (read_vocabulary(Path(values["labels"]).expanduser()) if values["labels"]
                  else default_vocabulary())
    checkpoint = Path(args.label_checkpoint).expanduser() if args.label_checkpoint else None
    model = values["label_model"]
    if model is None and checkpoint is not None:
        model = label_model_for(checkpoint)
        if model is None:
            offered = ", ".join(name for name, each in LABEL_MODELS.items() if each.official)
            raise UsageError(f"cannot tell the label model from the file name {checkpoint.name}: "
                             f"pass --label-model ({offered})")
    model = model or DEFAULT_LABEL_MODEL
    if checkpoint is None:
        checkpoint = label_model_path(model, cache_root)
    settings = LabelSettings(model, checkpoint, values["device"], threshold)
    return Labelling(settings, vocabulary, cache_root)


def _flag(name: str) -> str:
    return TABLE[name].option if name in TABLE else "--" + name.replace("_", "-")


def _check_label_model(labelling) -> None:
    """A missing label model file (without --download) stops the run."""
    from drawpipe.sam.labels import missing_label_model_message

    path = Path(labelling.settings.checkpoint)
    if not path.is_file():
        raise CheckpointError(missing_label_model_message(labelling.settings.model, path))


def _download_label_model(labelling, mirror: str | None, show_progress, out) -> None:
    """The label model's official file fetched when missing (--download: checked before)."""
    from drawpipe.sam.labels import LABEL_MODELS, download_label_model

    path = Path(labelling.settings.checkpoint)
    if path.is_file():
        return
    model = labelling.settings.model
    official = LABEL_MODELS[model].official
    if official is None:
        raise UsageError(f"--download: label model {model} has no published weights")
    print(f"downloading {official.address(mirror)} -> {path}", file=out, flush=True)
    download_label_model(model, labelling.cache_root, mirror, destination=path,
                         show_progress=show_progress)


def _labelling_line(labelling, device: str) -> str:
    """The start line of a labelling run: model, file, device, vocabulary."""
    from drawpipe.bundled import DEFAULT_VOCABULARY

    vocabulary = labelling.vocabulary
    source = ("the bundled vocabulary" if Path(vocabulary.source) == DEFAULT_VOCABULARY
              else vocabulary.source)
    return (f"labels: {labelling.settings.model} from {labelling.settings.checkpoint} on "
            f"{device}, {len(vocabulary.names)} names ({len(vocabulary.stuff)} of them "
            f"background) from {source}, trusted at {labelling.settings.trust_threshold:g}")


def _print_empty(empty: list[tuple[str, str]], out, shown: int = 5) -> None:
    """One line for each image that got no cut-out (the first ``shown``), and a count."""
    for key, why in empty[:shown]:
        print(f"{key}: no cut-out: {why}", file=out)
    if len(empty) > shown:
        print(f"{len(empty) - shown} more image(s) got no cut-out; their cutouts.json says why",
              file=out)


def _segment_checkpoint(model_type: str | None, checkpoint: str | None,
                        cache_dir: Path) -> tuple[str, Path]:
    """(model type, checkpoint path) from --model and --checkpoint: the type named in the
    checkpoint's file name when --model is not given; the official file in the cache
    when --checkpoint is not given (vit_b when neither is)."""
    from drawpipe.sam.models import MODEL_TYPES, model_type_for

    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        model_type = model_type or model_type_for(path)
        if model_type is None and not path.is_file():  # the first thing to say
            raise CheckpointError(f"SAM checkpoint {path} not found: check the path, or leave "
                                  "out --checkpoint and add --download to fetch an official "
                                  f"one (--model {', '.join(OFFICIAL_CHECKPOINTS)})")
        if model_type is None:
            raise UsageError(f"cannot tell the model type from the file name {path.name}: "
                             f"pass --model ({', '.join(OFFICIAL_CHECKPOINTS)})")
        return model_type, path
    model_type = model_type or "vit_b"
    official = MODEL_TYPES[model_type].official
    if official is None:
        raise UsageError(f"--model {model_type} has no published checkpoint: pass --checkpoint")
    return model_type, cache_dir / official.file_name


def _demo_checkpoint(args, cache_dir: Path, out) -> tuple[str | None, Path | None]:
    """For make demo: --checkpoint if given, else an official checkpoint already in the
    cache (smallest first), else vit_b downloaded; (None, None) when none can be had
    (then one line says how to add the step)."""
    from drawpipe.errors import DownloadFailed
    from drawpipe.sam.checkpoints import download_checkpoint
    from drawpipe.sam.models import MODEL_TYPES

    if args.checkpoint is not None:
        return _segment_checkpoint(args.model, args.checkpoint, cache_dir)
    for model_type in ("vit_t", "vit_b", "vit_l", "vit_h"):
        path = cache_dir / MODEL_TYPES[model_type].official.file_name
        if path.is_file():
            return model_type, path
    official = MODEL_TYPES["vit_b"].official
    path = cache_dir / official.file_name
    url = official.address(args.download_from)
    print(f"no SAM checkpoint in {cache_dir}: downloading {url} (375 MB)", file=out, flush=True)
    try:
        download_checkpoint(url, path, official.sha256, retries=1,
                            show_progress=False if args.no_progress else None)
    except DownloadFailed as exc:
        source = "" if url == official.url else f" from {official.url}"
        print(f"segment step skipped: cannot download {url} ({exc.reason}); to add it, put "
              f"{official.file_name}{source} into {cache_dir}/ and run make demo again", file=out)
        return None, None
    return "vit_b", path


def main(argv=None, project_dir: Path | None = None) -> int:
    """segment.py (and drawpipe-segment): see cli.common.script_main."""
    return script_main(run, parse_arguments, argv, project_dir)
