"""The Open Inference Protocol front (inference.GRPCInferenceService, KServe v2).

``servicer`` adapts ModelInfer and the readiness calls onto the gateway in the same
process; ``codec`` converts tensors to and from a function's bytes and params.
Imports: ``server.gateway`` (the core it adapts), ``server.rpc``, the top level.
"""
