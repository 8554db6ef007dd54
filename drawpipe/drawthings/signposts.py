"""The stages a Draw Things request goes through, as its gRPC server signposts them
(imageService.proto ``ImageGenerationSignpostProto``), and how progress lines and the
metrics log name them. No imports: the report reads the log's columns from here.

    STAGES                        signpost -> the stage of the request it ends
    TRANSFER_STAGE                from the last signpost to the image's last byte
    STAGE_DONE                    stage -> what a progress line says once it is done
    COLUMN_OF_STAGE               stage -> its column of seconds in the metrics log
    PHASE_COLUMNS                 those columns, in the order a request goes through them
    phase_columns(stage_seconds)  {column: seconds}, summed over a job's answers

Each answer's stage seconds are the time up to each signpost, summed per stage
(grpc_client.py), so text encoding counts from the call's start: it holds the wait in
the server's queue and any model loading too. Both passes of a stage (hires fix) share
a column. HTTP tells none of this: its jobs leave the columns empty.
"""

STAGES = {
    "textEncoded": "text encoding",
    "imageEncoded": "image encoding",
    "sampling": "sampling",
    "imageDecoded": "image decoding",
    "secondPassImageEncoded": "second pass image encoding",
    "secondPassSampling": "second pass sampling",
    "secondPassImageDecoded": "second pass image decoding",
    "faceRestored": "face restoration",
    "imageUpscaled": "upscaling",
}
TRANSFER_STAGE = "transfer"

STAGE_DONE = {
    "text encoding": "text encoded",
    "image encoding": "image encoded",
    "sampling": "sampling",
    "image decoding": "image decoded",
    "second pass image encoding": "second pass: image encoded",
    "second pass sampling": "second pass sampling",
    "second pass image decoding": "second pass: image decoded",
    "face restoration": "faces restored",
    "upscaling": "upscaled",
}

COLUMN_OF_STAGE = {
    "text encoding": "text_encoding_seconds",
    "image encoding": "image_encoding_seconds",
    "second pass image encoding": "image_encoding_seconds",
    "sampling": "sampling_seconds",
    "second pass sampling": "sampling_seconds",
    "image decoding": "decoding_seconds",
    "second pass image decoding": "decoding_seconds",
    "face restoration": "face_restoration_seconds",
    "upscaling": "upscaling_seconds",
    TRANSFER_STAGE: "transfer_seconds",
}
PHASE_COLUMNS = tuple(dict.fromkeys(COLUMN_OF_STAGE.values()))


def phase_columns(stage_seconds: list[dict[str, float]]) -> dict[str, float]:
    """{PHASE_COLUMNS column: seconds}, summed over the ``stage_seconds`` of a job's
    answers (transport.ImageAnswer; a recipe's steps); {} when none says (HTTP), so the
    log's columns stay empty rather than say 0."""
    totals: dict[str, float] = {}
    for answer_stages in stage_seconds:
        for stage, seconds in answer_stages.items():
            column = COLUMN_OF_STAGE.get(stage)
            if column is not None:
                totals[column] = totals.get(column, 0.0) + seconds
    return totals
