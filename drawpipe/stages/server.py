"""What the stages whose jobs are requests to a Draw Things server share (generate,
upscale): the server's process to sample, the quarantine's probe, and a worker's client.

    ServerStage   a base class: ``self.server_settings`` (drawthings/backends.py
                  ServerSettings) is all it needs
"""

from drawpipe.drawthings import backends
from drawpipe.engine.jobs import WorkerContext


class ServerStage:
    server_settings: backends.ServerSettings

    def process_to_sample(self, server: str) -> str | None:
        """Draw Things' process, when ``server`` is this machine."""
        return backends.sampled_process(server, self.server_settings)

    def probe(self, server: str) -> None:
        """One look at ``server`` (GET /, or gRPC's Echo): the engine's probe of a
        quarantined server (engine/quarantine.py)."""
        backends.probe_server(server, self.server_settings)

    def open_client(self, server: str, context: WorkerContext):
        """The worker's client of ``server`` (an http(s):// or grpc(s):// URL): its re-send
        waits end with the run, the engine's checkpoint runs before every request, and
        the engine may cancel the request in flight."""
        client = backends.open_client(server, self.server_settings, sleep=context.sleep,
                                      on_resend=context.resent, before_send=context.checkpoint)
        context.on_cancel(client.cancel)
        return client
