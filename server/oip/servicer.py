"""inference.GRPCInferenceService: the Open Inference Protocol, a thin adapter onto ``Gateway``.

Triton, KServe and MLServer clients call dcf's functions through it unchanged. Each
function (and each alias) is a model of that name, version "1", with one BYTES
input ``INPUT`` and one BYTES output ``OUTPUT`` of shape [1] (the conversions are in
server/oip/codec.py). ModelInfer goes through ``Gateway.invoke``, the path of
dcf.v1 Invoke: the same results, limits and error statuses.

Readiness: ServerLive is true while the gateway answers. ModelReady is true while
the function has a worker whose channel is READY (client-side health checking).
ServerReady is true when every function is ready, as Triton and KServe report a
server ready once all its models are; ask ModelReady for one function.
"""

from __future__ import annotations

import importlib.metadata

import grpc

from handlers.errors import InvalidInput
from protos.inference import grpc_predict_v2_pb2 as pb
from protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc
from server.config import FunctionConfig
from server.gateway.core import Gateway
from server.oip import codec
from server.rpc import status as errors
from server.rpc.server import decode

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE = SERVICE_DESCRIPTOR.full_name
SERVER_NAME = "dcf"
INFER_SPAN = f"{SERVICE}/ModelInfer"  # the call's span in its trace


def server_version() -> str:
    try:
        return importlib.metadata.version("dcf")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    RAW_REQUESTS = frozenset({"ModelInfer"})  # weighed against the unary budget before decoding

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._version = server_version()

    def _model(self, name: str, version: str) -> FunctionConfig:
        """The function model ``name`` stands for; raises NotFound or InvalidInput."""
        if not name:
            raise InvalidInput("the request names no model")
        fn = self._gateway.resolve(name)
        codec.check_version(name, version)
        return fn

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        routes = self._gateway.routes
        functions = self._gateway.settings.functions
        return pb.ServerReadyResponse(ready=all(routes.ready(fn.name) for fn in functions))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=[])

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            fn = self._model(request.name, request.version)
        except Exception as exc:  # any error: mapped to a status in one place
            await errors.abort(context, exc)
            raise  # unreachable: abort raises
        return pb.ModelReadyResponse(ready=self._gateway.routes.ready(fn.name))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            self._model(request.name, request.version)
        except Exception as exc:  # any error: mapped to a status in one place
            await errors.abort(context, exc)
            raise  # unreachable: abort raises
        return codec.model_metadata(request.name)

    async def ModelInfer(
        self, message: bytes, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            with self._gateway.unary_request(message, context):
                request = pb.ModelInferRequest()
                try:
                    request = decode(pb.ModelInferRequest, message)
                    self._model(request.model_name, request.model_version)
                    data, raw = codec.input_of(request)
                    codec.check_outputs(request)
                    params = codec.params_of(request)
                except Exception as exc:  # any error: refused before the gateway's call
                    self._gateway.refused(request.model_name, exc, context)
                    raise
                content_type, body = await self._gateway.invoke(
                    request.model_name, data, params, context, INFER_SPAN
                )
                return codec.infer_response(request, content_type, body, raw)
        except Exception as exc:  # any error: mapped to a status in one place
            await errors.abort(context, exc)
            raise  # unreachable: abort raises
