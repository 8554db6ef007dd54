"""Code generated from Draw Things' schemas by tools/derive_drawthings_grpc.py: do not edit.

Upstream: draw-things-community bfafc68cf2c105319f8a5fe7e12bb9bd6f2b3a09 (2026-08-06T05:58:29+00:00).
- imageService_pb2.py, imageService_pb2_grpc.py: Libraries/GRPC/Models/Sources/imageService/imageService.proto by grpcio-tools 1.85.4 (libprotoc 35.1).
- config/: Libraries/DataModels/Sources/config.fbs by flatc version 2.0.8, namespace drawpipe.drawthings.generated.config.
- draw_things_root_ca.crt: Libraries/BinaryResources/Resources/root_ca.crt.
"""
