"""Your own functions: a function is a folder, served beside the registry's.

A function folder holds a ``function.yaml`` (name, description, content types,
params, limits, options, the handler's file and factory, requirements and build
packages) and the handler file, written against handlers/base.py. It need not be
inside dcf's tree or on ``sys.path``.

- ``folder``: read and check a folder into a FunctionConfig, or say in one line which
  file is wrong and why; find the folders under the functions directories.
- ``load``: import a folder's handler by its file path and make its Function (what
  a worker and ``--local`` run); no gRPC, so the worker role may import it.
- ``local``: run a folder's function in this process, for its own tests.
- ``scaffold``: ``python -m server init NAME``, a working folder to start from.
- ``watch``: what changed in the functions directories since the last look (added,
  changed, removed folders), by polling their files' times and sizes.
- ``ship``: ``python -m server ship FOLDER --out DIR``, the Dockerfile, compose
  service, Kubernetes manifests and registry entry that deploy a folder.

Imports: ``server.config`` and ``handlers``; never a role. The composition root
(server/run/) serves the folders and swaps their versions while serving.
"""
