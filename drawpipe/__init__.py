"""drawpipe: resumable batch scripts over Draw Things' HTTP API (sdapi).

Packages, lowest layer first; each imports only from the layers above it in this
list (tests/test_architecture.py holds it):

  errors, files, png, layout, settings, bundled
                                         exceptions; atomic writes and "done" checks;
                                         PNG without decoding; the dataset's folders
                                         and names; every setting once (flag, profile
                                         key, default, help); the shipped templates
                                         and prompts
  engine/       the job loop, claims, the share guard, stop signals, metrics
  drawthings/   the API table and its rules, the HTTP client, templates, the simulator
  sam/          Segment Anything: settings, models, the lean mask generator, cut-outs
  inventory     what is on a share: images, cut-outs, metadata, verdict files, logs
  curate/       verdicts, takes (rejects re-made, stale outputs), quality signals
  stages/       generate (+ prompts), upscale (recipes), segment
  report/       figures, gallery, contact sheets (python -m drawpipe.report)
  cli/          the scripts' options, profiles and bodies
  review, export, demo, simulator   python -m entry points
"""

__version__ = "0.1.0"
