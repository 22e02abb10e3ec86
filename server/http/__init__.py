"""The HTTP front role: call any function from curl or a browser, and the web page.

    POST /v1/functions/{name}?param=value    body in, the function's answer out, both streamed
    GET  /v1/functions                       the functions, as JSON
    /v2/...                                  Open Inference over HTTP (KServe v2 REST)
    GET  /openapi.json, /docs                the API as OpenAPI 3.1, and a page rendering it
    GET  /                                   the page: server/http/web/ (HTML, JS, CSS)

It is a gRPC client of the gateway like any other (imports: ``server.rpc``, the top
level, and of the Open Inference role only its pure model mapping,
``server.oip.codec``). ``api`` holds the /v1 handlers; ``v2`` the /v2 ones, each a
call of the gateway's inference service, with ``v2_wire`` converting their bodies and
``body`` reading them within bounds; ``openapi`` writes the description from the
registry. ``app.create_app`` makes the ASGI app (Starlette); ``serve.run_http``
serves it with uvicorn in the caller's event loop until a stop event: the embedded
default runs it beside the gateway (``serve_beside_gateway``, over a loopback
channel), ``python -m server http`` alone (``serve_role``). ``options`` reads its
settings, ``guard`` and ``listener`` hold the defences below.

Safe by default, because a browser on the same machine is a caller too:

* ``BrowserGuard`` answers only for the names this server is reached by (the
  ``Host`` header; DNS rebinding turns any other name into ours), refuses calls
  from another origin's page (403; a cross-site ``text/plain`` POST needs no
  preflight, so refusing its answer is not enough: it must not run), and puts a
  Content-Security-Policy and ``nosniff`` on every answer.
* ``FrontProtocol`` adds the deadlines uvicorn's h11 protocol lacks: a request's
  head must arrive within ``header_timeout``, and neither its body nor its answer
  may stall for ``body_timeout``; between requests uvicorn's keep-alive timeout
  applies.
* ``Listener`` accepts connections itself instead of asyncio's server: it keeps
  at most ``max_connections`` open (at most half the open-file limit, so the
  gateway's gRPC side in the same process always has descriptors), makes room by
  closing the connection idle the longest, and, out of file descriptors, logs
  once per interval instead of once per failed accept.
"""
