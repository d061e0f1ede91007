"""FastAPI gateway: routes, schemas, auth, uploads. Sends tasks to workers by name; never
imports torch (the gateway image stays small and starts fast).

    from service.app import create_app      # the ASGI app
    from service.serve import serve          # what `mcvae serve` calls
    from service.keys import create_key      # what `mcvae keys create` calls
"""

__version__ = "0.1.0"
