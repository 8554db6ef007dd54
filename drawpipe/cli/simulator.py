"""The simulator's command line: Draw Things' HTTP API (drawthings/simulator.py), or with
``--grpc`` its gRPC API (drawthings/grpc_simulator.py). ``python -m drawpipe.simulator``
and ``drawpipe simulator``."""


def main(argv: list[str]) -> int:
    if "--grpc" in argv:
        from drawpipe.drawthings.grpc_simulator import main as grpc_main

        return grpc_main([argument for argument in argv if argument != "--grpc"])
    from drawpipe.drawthings.simulator import main as http_main

    return http_main(argv)
