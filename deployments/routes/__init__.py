"""The OpenAI routes, one module per API, each an ``APIRouter`` over the app's one state object
(:class:`deployments.routes.common.AppState`, read as ``request.app.state.serving``).
``deployments/api.py`` assembles them with the middleware into the app."""
