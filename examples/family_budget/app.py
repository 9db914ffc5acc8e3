"""The family-budget web app: FastAPI routes, Jinja2 pages and HTMX fragments.

Every write follows the same path: check the form, then write and publish in a unit of
work of the store (:mod:`family_budget.store`)::

    async with db.unit_of_work(manager) as work:
        fact = await work.create_fact(...)
        await work.publish(event, topic=budget_topic(budget_id))

The data is in SQLite (:mod:`family_budget.db`), where the publish follows the committed
write; on the PostgreSQL backend (``postgresql://…``) it is in that same database
(:mod:`family_budget.pg`), and the write and its event are one transaction: delivered if
and only if saved. Each open tab of that budget receives the event through the bundled
browser client, which turns it into an htmx event; the fragments listening for it (facts
table and totals, article lists) re-fetch themselves. The page carries the topic's
position it was rendered at and subscribes from it, so an event published while the page
was on its way is replayed, not lost. Run it with ``python -m family_budget`` from
``examples/`` or with ``uvicorn --factory --app-dir examples family_budget.app:app_factory``.

Who may open a budget is the store's to say (:meth:`~family_budget.db.Budget.admits`): its
owner, and the members the owner shares it with. The page asks for the budget topic's
presence too, and lists who is viewing it now (a user once, however many tabs); the
manager learns who a connection is from ``identify``. When the owner removes a member,
the store forgets them first, then ``manager.unsubscribe_user`` takes the topic away from
every tab of theirs, on every worker, and their own stream (``publish_to_user``) tells
them who did it; ``authorize`` reads the store, so those tabs cannot subscribe again.

For operators, ``/metrics`` serves the manager's metrics to Prometheus and ``/ops`` shows
the same numbers as a page (see :mod:`family_budget.ops`); both answer only from this
machine.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from html import escape
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Cookie, Depends, FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException
from starlette.routing import Route

from budget_ws import (
    Action,
    BackendError,
    ConnectionManager,
    Handshake,
    HandshakeRejected,
    PresenceOptions,
)
from budget_ws import User as Identity
from budget_ws.adapters import client_url
from budget_ws.adapters.fastapi import Manager, create_router, lifespan
from budget_ws.backends import Backend, create_backend
from budget_ws.prometheus import metrics_app

from .db import Budget, Database, Totals, User
from .events import (
    AddedToBudget,
    ArticleUpdated,
    FactCreated,
    FactDeleted,
    FactUpdated,
    MemberAdded,
    MemberRemoved,
    RemovedFromBudget,
    budget_of_topic,
    budget_topic,
    is_budget_topic,
)
from .forms import ArticleName, FactForm, InvalidInput
from .ops import (
    LOCAL_ONLY,
    LocalOnly,
    Readings,
    close_reason,
    is_local,
    milliseconds,
    per_second,
)
from .store import Store, WriteFailed

__all__ = ["SettingsConflict", "app_factory", "create_app", "is_postgres"]

logger = logging.getLogger("family_budget")

HERE = Path(__file__).resolve().parent
COOKIE = "demo_user"
WS_PATH = "/ws"

templates = Jinja2Templates(directory=HERE / "templates")
templates.env.trim_blocks = templates.env.lstrip_blocks = True
templates.env.filters["money"] = lambda amount: f"{amount:,.2f}"
templates.env.filters["person"] = str.capitalize  # "alice" -> "Alice"
templates.env.filters.update(
    milliseconds=milliseconds, per_second=per_second, close_reason=close_reason
)
templates.env.globals.update(client_url=client_url(), ws_path=WS_PATH)


def default_database() -> str:
    """``$BUDGET_DEMO_DB``, else a file in the temporary directory (kept between runs)."""
    return os.environ.get("BUDGET_DEMO_DB") or str(
        Path(tempfile.gettempdir()) / "budget_ws_family_budget.sqlite3"
    )


def default_backend() -> str:
    """``$BUDGET_WS_BACKEND``, else the in-memory backend (one process)."""
    return os.environ.get("BUDGET_WS_BACKEND") or "memory://"


def default_schema() -> str:
    """``$BUDGET_DEMO_SCHEMA``, else ``family_budget``: where the data goes on PostgreSQL."""
    return os.environ.get("BUDGET_DEMO_SCHEMA") or "family_budget"


def is_postgres(backend: str) -> bool:
    """Whether a backend URL names PostgreSQL (``postgresql://`` or ``postgres://``)."""
    return urlsplit(backend).scheme.lower() in ("postgresql", "postgres")


class SettingsConflict(ValueError):
    """Two settings of the demo contradict each other; the message says which to drop."""


def postgres_store(backend: Backend, database: str | None, schema: str | None) -> Store:
    """The demo's data in the database of a PostgreSQL backend.

    Raises:
        SettingsConflict: A SQLite file was given too (``database`` or ``$BUDGET_DEMO_DB``).
    """
    if database is not None or os.environ.get("BUDGET_DEMO_DB"):
        given = "--db" if database is not None else "$BUDGET_DEMO_DB"
        raise SettingsConflict(
            f"{given} is for SQLite only: on PostgreSQL the demo keeps its data in the "
            f"backend's database (in schema {schema or default_schema()!r}; "
            f"$BUDGET_DEMO_SCHEMA chooses another). Drop {given}, or choose another backend."
        )
    # Imported here: asyncpg is needed on PostgreSQL only (create_backend said so if missing).
    from budget_ws.backends.postgresql import PostgresBackend

    from .pg import PostgresStore

    assert isinstance(backend, PostgresBackend)
    return PostgresStore(backend.url, schema=schema or default_schema())


def create_app(
    database: str | None = None, backend: str | None = None, *, schema: str | None = None
) -> FastAPI:
    """Build the demo app; nothing is opened until the app starts.

    Args:
        database: SQLite file, or ``":memory:"``; default :func:`default_database`. For
            SQLite only.
        backend: budget_ws backend URL; default :func:`default_backend`. With
            ``postgresql://…``, the demo keeps its data in that database too, and publishes
            each change in the transaction that writes it. budget_ws's schema must be
            there already (``python -m budget_ws migrate URL``).
        schema: The schema of the demo's tables on PostgreSQL; default
            :func:`default_schema`.

    Raises:
        SettingsConflict: ``database`` (or ``$BUDGET_DEMO_DB``) with a PostgreSQL backend.
    """
    url = backend or default_backend()
    backend_instance = create_backend(url)
    db: Store
    if is_postgres(url):
        db = postgres_store(backend_instance, database, schema)
    else:
        db = Database(database or default_database())

    async def authenticate(handshake: Handshake) -> User:
        # Runs before the WebSocket is accepted: no known user, no connection.
        name = handshake.cookies.get(COOKIE)
        user = await db.user(name) if name else None
        if user is None:
            raise HandshakeRejected("log in first", status=401)
        return user

    def identify(user: User) -> Identity:
        # What other viewers of a budget see of this user: the name, never the principal.
        return Identity(user.name, {"name": user.name.capitalize()})

    async def authorize(user: User, topic: str, action: Action) -> bool:
        # Tabs only listen (changes come through the forms), and see who else is viewing,
        # on the budgets the user may open now: a member the owner removed is refused.
        budget_id = budget_of_topic(topic)
        if action == "publish" or budget_id is None or not is_budget_id(budget_id):
            return False
        budget = await db.budget(budget_id)
        return budget is not None and budget.admits(user.name)

    manager = ConnectionManager(
        backend_instance,
        authorize=authorize,
        identify=identify,
        presence=PresenceOptions(topics=is_budget_topic),
    )
    manager_lifespan = lifespan(manager)
    # Its own registry: several apps in one process (tests) would clash in the global one.
    prometheus = metrics_app(manager, registry=CollectorRegistry())
    readings = Readings(manager)

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with db, manager_lifespan(app) as state:
            yield {**state, "database": db, "readings": readings}

    app = FastAPI(
        title="Family budget",
        lifespan=run,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(create_router(manager, path=WS_PATH, authenticate=authenticate))
    app.include_router(router)
    # A route rather than a mount: a mount answers `/metrics` with a redirect to `/metrics/`.
    app.router.routes.append(Route("/metrics", LocalOnly(prometheus), name="metrics"))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_exception_handler(WriteFailed, write_failed)
    return app


def app_factory() -> FastAPI:
    """The app with its settings from the environment, for ``uvicorn --factory``."""
    return create_app()


# Dependencies -----------------------------------------------------------------------------


class LoginRequired(Exception):
    """No demo user is logged in (or the cookie names nobody)."""


def get_database(request: Request) -> Store:
    database: Store = request.state.database
    return database


Db = Annotated[Store, Depends(get_database)]


def get_readings(request: Request) -> Readings:
    if not is_local(request.scope.get("client")):
        raise HTTPException(403, LOCAL_ONLY)
    readings: Readings = request.state.readings
    return readings


OpsReadings = Annotated[Readings, Depends(get_readings)]
"""The manager's numbers, for requests from this machine only (403 for others)."""


async def get_user(db: Db, demo_user: Annotated[str | None, Cookie()] = None) -> User:
    user = await db.user(demo_user) if demo_user else None
    if user is None:
        raise LoginRequired
    return user


CurrentUser = Annotated[User, Depends(get_user)]


def is_budget_id(number: int) -> bool:
    """Whether the databases can hold ``number`` as a budget's id (a signed 64-bit one)."""
    return 0 < number < 2**63


async def get_budget(budget_id: int, user: CurrentUser, db: Db) -> Budget:
    budget = await db.budget(budget_id) if is_budget_id(budget_id) else None
    if budget is None or not budget.admits(user.name):
        raise HTTPException(
            403, "That is not your budget, nor one shared with you: you cannot see it."
        )
    return budget


CurrentBudget = Annotated[Budget, Depends(get_budget)]
"""The budget of the URL, once checked to be one the logged-in user may open."""


def get_budget_id(budget: CurrentBudget) -> int:
    return budget.id


BudgetId = Annotated[int, Depends(get_budget_id)]
"""The id of :data:`CurrentBudget`."""


def get_owned_budget(budget: CurrentBudget, user: CurrentUser) -> Budget:
    if user.name != budget.owner:
        raise HTTPException(403, "Only the owner of the budget can change who shares it.")
    return budget


OwnedBudget = Annotated[Budget, Depends(get_owned_budget)]
"""The budget of the URL, once checked to be the logged-in user's own."""


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    return templates.TemplateResponse(
        request, template, context, status_code=status, headers=headers
    )


def back_to_budget(budget_id: int) -> RedirectResponse:
    """The answer to a form posted without htmx (JavaScript off): reload the page."""
    return RedirectResponse(f"/budgets/{budget_id}", status_code=303)


# Error pages ------------------------------------------------------------------------------


async def login_required(request: Request, exc: Exception) -> Response:
    if is_htmx(request):
        return Response(status_code=401, headers={"HX-Redirect": "/login"})
    return RedirectResponse("/login", status_code=303)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(request, exc.status_code, str(exc.detail))


async def bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    fields = ", ".join(str(error["loc"][-1]) for error in exc.errors())
    return error_response(request, 400, f"Bad request: check {fields}.")


async def write_failed(request: Request, exc: Exception) -> Response:
    logger.warning("%s %s: %s", request.method, request.url.path, exc)
    message = "The database refused the change: nothing was saved, and no tab was told."
    return error_response(request, 500, message)


def error_response(request: Request, status: int, message: str) -> Response:
    if is_htmx(request):
        # Whatever the request meant to replace, the message goes to the page's flash area.
        return HTMLResponse(
            f'<p class="error" role="alert">{escape(message)}</p>',
            status_code=status,
            headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"},
        )
    return render(request, "error.html", {"status": status, "message": message}, status=status)


# Pages ------------------------------------------------------------------------------------

router = APIRouter()


@router.get("/", response_model=None)
async def home(db: Db, demo_user: Annotated[str | None, Cookie()] = None) -> RedirectResponse:
    user = await db.user(demo_user) if demo_user else None
    return RedirectResponse(f"/budgets/{user.budget_id}" if user else "/login", status_code=303)


@router.get("/login")
async def login_page(request: Request, db: Db) -> HTMLResponse:
    return render(request, "login.html", {"users": await db.users()})


@router.post("/login", response_model=None)
async def login(
    request: Request, db: Db, user: Annotated[str, Form()] = ""
) -> HTMLResponse | RedirectResponse:
    found = await db.user(user)
    if found is None:
        context = {"users": await db.users(), "error": "Pick one of the demo users."}
        return render(request, "login.html", context, status=400)
    response = RedirectResponse(f"/budgets/{found.budget_id}", status_code=303)
    # A demo: the user name is the whole credential. SameSite keeps other sites' forms out.
    response.set_cookie(COOKIE, found.name, httponly=True, samesite="lax")
    return response


@router.post("/logout")
async def logout() -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


async def budget_context(db: Store, user: User, budget: Budget, **context: Any) -> dict[str, Any]:
    """Everything the budget page shows."""
    budget_id = budget.id
    return {
        "topic": budget_topic(budget_id),
        "budgets": await db.budgets(user.name),
        **await ledger_context(db, budget_id),
        **await members_context(db, user, budget),
        "articles": await db.articles(budget_id),
        "centers": await db.financial_centers(budget_id),
        "form": FactForm(),
        "editing": None,
        "renaming": None,
        "position": None,
        **context,
    }


async def ledger_context(db: Store, budget_id: int) -> dict[str, Any]:
    """The facts table and the totals."""
    facts = await db.facts(budget_id)
    return {"budget_id": budget_id, "facts": facts, "totals": Totals.of(facts)}


async def members_context(db: Store, user: User, budget: Budget) -> dict[str, Any]:
    """Who shares the budget and, for its owner, whom it could be shared with."""
    others = [] if user.name != budget.owner else await db.users()
    return {
        "user": user,
        "budget": budget,
        "budget_id": budget.id,
        "candidates": [other.name for other in others if not budget.admits(other.name)],
    }


async def render_page(
    request: Request,
    db: Store,
    manager: ConnectionManager,
    user: User,
    budget: Budget,
    *,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The whole budget page, with the position of the budget's topic it shows.

    The position is read *before* the data: the page's script subscribes from it
    (``ws.subscribe(topic, {position})``), so the server replays every event published
    since, including one published while the page was on its way. An event that the page
    shows already costs one needless re-fetch; none is missed.
    """
    try:
        position = await manager.position(budget_topic(budget.id))
        rendered = {"offset": position.offset, "epoch": position.epoch}
    except BackendError:  # e.g. Redis is down: the page subscribes fresh and re-fetches
        rendered = None
    context = await budget_context(db, user, budget, position=rendered, **context)
    return render(request, "budget.html", context, status=status)


@router.get("/budgets/{budget_id}")
async def budget_page(
    request: Request, budget: CurrentBudget, user: CurrentUser, db: Db, manager: Manager
) -> Response:
    return await render_page(request, db, manager, user, budget)


# Fragments the page re-fetches when an event arrives --------------------------------------


@router.get("/budgets/{budget_id}/ledger")
async def ledger(request: Request, budget_id: BudgetId, db: Db) -> HTMLResponse:
    return render(request, "_ledger.html", await ledger_context(db, budget_id))


@router.get("/budgets/{budget_id}/articles")
async def articles(request: Request, budget_id: BudgetId, db: Db) -> HTMLResponse:
    context = {"budget_id": budget_id, "articles": await db.articles(budget_id), "renaming": None}
    return render(request, "_articles.html", context)


@router.get("/budgets/{budget_id}/members")
async def members(
    request: Request, budget: CurrentBudget, user: CurrentUser, db: Db
) -> HTMLResponse:
    return render(request, "_members.html", await members_context(db, user, budget))


@router.get("/budgets/{budget_id}/article-options")
async def article_options(
    request: Request, budget_id: BudgetId, db: Db, article_id: str = ""
) -> HTMLResponse:
    # The <select> sends its current value, so a re-fetch keeps the user's choice.
    context = {"articles": await db.articles(budget_id), "selected": article_id}
    return render(request, "_article_options.html", context)


# Writes: check, then save and publish in one unit of work ---------------------------------

FormField = Annotated[str, Form()]


@router.post("/budgets/{budget_id}/facts", response_model=None)
async def create_fact(
    request: Request,
    budget: CurrentBudget,
    user: CurrentUser,
    db: Db,
    manager: Manager,
    amount: FormField = "",
    article_id: FormField = "",
    financial_center_id: FormField = "",
) -> Response:
    budget_id = budget.id
    form = FactForm(amount, article_id, financial_center_id)
    try:
        async with db.unit_of_work(manager) as work:
            fact = await work.create_fact(budget_id, form.parse(), author=user.name)
            event = FactCreated.of(fact, author=user.name)
            await work.publish(event, topic=budget_topic(budget_id))
    except InvalidInput as invalid:
        form.errors = invalid.errors
        return await fact_form_error(request, db, manager, user, budget, form=form)
    if not is_htmx(request):
        return back_to_budget(budget_id)
    # A fresh form that keeps the article and center chosen: facts often come in runs.
    fresh = FactForm("", article_id, financial_center_id)
    context = await budget_context(db, user, budget, form=fresh)
    context["added"] = fact
    return render(request, "_new_fact.html", context, headers={"HX-Trigger": "facts-changed"})


@router.get("/budgets/{budget_id}/facts/{fact_id}/edit")
async def edit_fact(
    request: Request,
    budget: CurrentBudget,
    fact_id: int,
    user: CurrentUser,
    db: Db,
    manager: Manager,
) -> HTMLResponse:
    fact = await db.fact(budget.id, fact_id)
    if fact is None:
        raise HTTPException(404, "That fact does not exist (any more).")
    form = FactForm(str(fact.amount), str(fact.article_id), str(fact.financial_center_id))
    if not is_htmx(request):
        return await render_page(request, db, manager, user, budget, editing=fact, edit_form=form)
    context = await budget_context(db, user, budget, editing=fact, edit_form=form)
    return render(request, "_edit_fact.html", context)


@router.post("/budgets/{budget_id}/facts/{fact_id}", response_model=None)
async def update_fact(
    request: Request,
    budget: CurrentBudget,
    fact_id: int,
    user: CurrentUser,
    db: Db,
    manager: Manager,
    amount: FormField = "",
    article_id: FormField = "",
    financial_center_id: FormField = "",
) -> Response:
    budget_id = budget.id
    form = FactForm(amount, article_id, financial_center_id)
    try:
        async with db.unit_of_work(manager) as work:
            fact = await work.update_fact(budget_id, fact_id, form.parse())
            if fact is None:
                raise HTTPException(404, "That fact does not exist (any more).")
            event = FactUpdated.of(fact, author=user.name)
            await work.publish(event, topic=budget_topic(budget_id))
    except InvalidInput as invalid:
        form.errors = invalid.errors
        editing = await db.fact(budget_id, fact_id)
        if editing is None:
            raise HTTPException(404, "That fact does not exist (any more).") from None
        return await fact_form_error(
            request, db, manager, user, budget, editing=editing, edit_form=form
        )
    if not is_htmx(request):
        return back_to_budget(budget_id)
    return HTMLResponse("", headers={"HX-Trigger": "facts-changed"})  # empties the editor


@router.post("/budgets/{budget_id}/facts/{fact_id}/delete", response_model=None)
async def delete_fact(
    request: Request, budget_id: BudgetId, fact_id: int, user: CurrentUser, db: Db, manager: Manager
) -> Response:
    async with db.unit_of_work(manager) as work:
        if not await work.delete_fact(budget_id, fact_id):
            raise HTTPException(404, "That fact does not exist (any more).")
        event = FactDeleted(id=fact_id, author=user.name)
        await work.publish(event, topic=budget_topic(budget_id))
    if not is_htmx(request):
        return back_to_budget(budget_id)
    return HTMLResponse("", headers={"HX-Trigger": "facts-changed"})  # removes the row


@router.post("/budgets/{budget_id}/articles/{article_id}", response_model=None)
async def rename_article(
    request: Request,
    budget: CurrentBudget,
    article_id: int,
    user: CurrentUser,
    db: Db,
    manager: Manager,
    name: Annotated[str, Form()] = "",
) -> Response:
    budget_id = budget.id
    form = ArticleName(name)
    try:
        async with db.unit_of_work(manager) as work:
            article = await work.rename_article(budget_id, article_id, form.parse())
            if article is None:
                raise HTTPException(404, "That article does not exist.")
            event = ArticleUpdated.of(article, author=user.name)
            await work.publish(event, topic=budget_topic(budget_id))
    except InvalidInput as invalid:
        form.error = invalid.errors["name"]
        renaming = {"id": article_id, "form": form}
        if not is_htmx(request):
            return await render_page(
                request, db, manager, user, budget, status=400, renaming=renaming
            )
        context = {"budget_id": budget_id, "articles": await db.articles(budget_id)}
        return render(request, "_articles.html", {**context, "renaming": renaming}, status=400)
    if not is_htmx(request):
        return back_to_budget(budget_id)
    context = {"budget_id": budget_id, "articles": await db.articles(budget_id), "renaming": None}
    return render(request, "_articles.html", context, headers={"HX-Trigger": "articles-changed"})


async def fact_form_error(
    request: Request,
    db: Store,
    manager: ConnectionManager,
    user: User,
    budget: Budget,
    **form: Any,
) -> HTMLResponse:
    """Show a fact form again with what is wrong, as typed (status 400)."""
    if not is_htmx(request):
        return await render_page(request, db, manager, user, budget, status=400, **form)
    context = await budget_context(db, user, budget, **form)
    template = "_edit_fact.html" if "editing" in form else "_new_fact.html"
    return render(request, template, context, status=400)


# Members: the owner shares the budget, and takes it back ---------------------------------


@router.post("/budgets/{budget_id}/members", response_model=None)
async def add_member(
    request: Request,
    budget: OwnedBudget,
    user: CurrentUser,
    db: Db,
    manager: Manager,
    name: Annotated[str, Form()] = "",
) -> Response:
    async with db.unit_of_work(manager) as work:
        if not await work.add_member(budget.id, name):
            raise HTTPException(400, "Choose one of the demo users who does not share it yet.")
        await work.publish(MemberAdded(name=name, author=user.name), topic=budget_topic(budget.id))
    # Saved and announced: tell the new member, on every tab of theirs.
    await manager.publish_to_user(
        name, AddedToBudget(budget_id=budget.id, budget=budget.name, author=user.name)
    )
    return await members_changed(request, db, user, budget.id)


@router.post("/budgets/{budget_id}/members/{name}/remove", response_model=None)
async def remove_member(
    request: Request, budget: OwnedBudget, name: str, user: CurrentUser, db: Db, manager: Manager
) -> Response:
    topic = budget_topic(budget.id)
    async with db.unit_of_work(manager) as work:
        if not await work.remove_member(budget.id, name):
            raise HTTPException(404, f"{name} is not a member of this budget (any more).")
        await work.publish(MemberRemoved(name=name, author=user.name), topic=topic)
    # The store no longer admits them, so `authorize` refuses any new subscribe: now take
    # the topic away from the tabs they have open, on every worker. Their pages hear no
    # more of this budget, and say why.
    await manager.unsubscribe_user(name, topic)
    await manager.publish_to_user(
        name, RemovedFromBudget(budget_id=budget.id, budget=budget.name, author=user.name)
    )
    return await members_changed(request, db, user, budget.id)


async def members_changed(request: Request, db: Store, user: User, budget_id: int) -> Response:
    """The answer to a change of members: the members card again, as it is now."""
    if not is_htmx(request):
        return back_to_budget(budget_id)
    budget = await db.budget(budget_id)
    assert budget is not None
    return render(request, "_members.html", await members_context(db, user, budget))


# The operator page: no login, from this machine only (see ops.py) -----------------------


@router.get("/ops")
async def ops_page(request: Request, readings: OpsReadings) -> HTMLResponse:
    return render(request, "ops.html", {"report": readings.report()})


@router.get("/ops/stats")
async def ops_stats(request: Request, readings: OpsReadings) -> HTMLResponse:
    """The page's numbers as a fragment, which the page re-fetches every second."""
    return render(request, "_ops.html", {"report": readings.report()})


@router.get("/ops/stats.json")
async def ops_stats_json(readings: OpsReadings) -> dict[str, Any]:
    return readings.report()
