"""The stack `make run` starts: one supervisor process over the API, the worker, the chaos proxy, the
simulators and (unless REDIS_URL is set) an embedded Redis. It runs the services, it is not one of them:
nothing of the app imports it."""
